# Unmounts the image's root and mounts it again, as virt-dib does between phases.
# Usage: remount-root.sh plain DEV | layer (diskimage-builder's block-device layer's mounts).
set -e
sync
umount -R "$MICRODIB_SYSROOT"
if [ "$1" = layer ]; then
    mount --rbind "$MICRODIB_BLOCK_WORK/mnt" "$MICRODIB_SYSROOT"
else
    mount "$2" "$MICRODIB_SYSROOT"
fi
