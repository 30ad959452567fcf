# Without a file system yet (block-device.d runs first), the target's root is a tmpfs.
set -e
mount -t tmpfs -o mode=0755 sysroot "$MICRODIB_SYSROOT"
mkdir -p "$MICRODIB_SYSROOT/tmp"
