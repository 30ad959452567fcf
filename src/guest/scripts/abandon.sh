# A step failed: everything written so far reaches the disks (the image's file systems are
# unmounted, the block-device layer's too), so that a disk kept for inspection shows it.
sync
umount -R "$MICRODIB_SYSROOT" 2>/dev/null
umount -R "$MICRODIB_BLOCK_WORK/mnt" 2>/dev/null
sync
exit 0
