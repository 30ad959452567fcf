# After root.d, which built the tree in subroot/: the tree moves up to the sysroot, with a
# /tmp for the aux tree's mount (diskimage-builder makes one too when root.d made none).
set -e
root=$MICRODIB_SYSROOT
sync
umount -R "$root$MICRODIB_IN_TARGET_AUX"
rm -rf "$root/tmp" "$root/subroot/lost+found"
for e in "$root"/subroot/* "$root"/subroot/.[!.]* "$root"/subroot/..?*; do
    if [ -e "$e" ] || [ -L "$e" ]; then mv "$e" "$root/"; fi
done
rmdir "$root/subroot"
mkdir -p "$root/tmp"
