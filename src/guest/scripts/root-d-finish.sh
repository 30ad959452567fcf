# After root.d, which built the tree in $MICRODIB_SUBROOT: the tree moves up to the sysroot, with a
# /tmp for the aux tree's mount (diskimage-builder makes one too when root.d made none).
set -e
root=$MICRODIB_SYSROOT
sync
umount -R "$root$MICRODIB_IN_TARGET_AUX"
sub=$MICRODIB_SUBROOT
rm -rf "$root/tmp" "$sub/lost+found"
for e in "$sub"/* "$sub"/.[!.]* "$sub"/..?*; do
    if [ -e "$e" ] || [ -L "$e" ]; then mv "$e" "$root/"; fi
done
rmdir "$sub"
mkdir -p "$root/tmp"
