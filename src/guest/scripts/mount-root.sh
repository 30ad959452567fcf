# Mounts the image's root file system (DEV) at the sysroot.
set -e
mount "$1" "$MICRODIB_SYSROOT"
mkdir -p "$MICRODIB_SYSROOT/tmp"
