# The tree built on the scratch disk moves into the image the layer made and mounted, which
# then takes its place at the sysroot.
set -e
root=$MICRODIB_SYSROOT mnt=$MICRODIB_BLOCK_WORK/mnt
sync
# What the phases left mounted in the tree (proc, an apt cache...) stays out of the image.
awk -v r="$root/" 'index($2, r) == 1 { print $2 }' /proc/mounts | sort -r | while read -r m; do umount -l "$m"; done
cp -a "$root"/. "$mnt"/
umount -R "$root"
mount --rbind "$mnt" "$root"
