# Mounts the helper drive at $MICRODIB_AUX/perm. Usage: helper-drive.sh keep|fresh DEV
# keep: the user's --drive (a partitioned one: its first partition); fresh: a throwaway disk,
# given a file system first.
set -e
mode=$1 dev=$2
mkdir -p "$MICRODIB_AUX/perm"
if [ "$mode" = keep ]; then
    dev=$(readlink -f "$dev"); name=${dev##*/}
    part=$(ls -d /sys/block/$name/$name* 2>/dev/null | sort -V | head -n1)
    [ -z "$part" ] || dev=/dev/${part##*/}
    mount "$dev" "$MICRODIB_AUX/perm" || { echo "cannot mount the helper drive ($dev): it needs a file system" >&2; exit 1; }
else
    mkfs.ext2 -q -F "$dev" >/dev/null
    mount "$dev" "$MICRODIB_AUX/perm"
fi
mkdir -p "$MICRODIB_AUX/perm/home/.cache/image-create"
