# The end of the guest's work: the helper drive unmounted, loop devices gone, all synced.
set -e
umount "$MICRODIB_AUX/perm"
losetup -D
sync
