# virt-dib's file system: mkfs with its options, then the label and (for ext*) the UUID.
# Usage: mkfs.sh FSTYPE DEV LABEL UUID [MKFS_OPTIONS] (the options are word-split, as
# virt-dib's were).
set -e
fs=$1 dev=$2 label=$3 uuid=$4 opts=${5-}
extra=
[ "$fs" != ext4 ] || extra="-i 4096 -J size=64"
# shellcheck disable=SC2086
mkfs -t "$fs" $extra $opts "$dev" >/dev/null
case $fs in
    ext*) e2label "$dev" "$label" && tune2fs -U "$uuid" "$dev" >/dev/null ;;
    xfs) xfs_admin -L "$label" "$dev" >/dev/null ;;
    btrfs) btrfs filesystem label "$dev" "$label" ;;
    vfat | fat | msdos) fatlabel "$dev" "$label" ;;
    ntfs) ntfslabel "$dev" "$label" ;;
    *) echo "cannot set a label on a $fs file system" >&2; exit 1 ;;
esac
