# A phase checkpoint's guest side. `freeze`: everything the root's file system holds is written
# to its disk, which then stays still while the host copies it. `thaw`: the build goes on.
# `release DEV...`: the root unmounted and its devices' caches dropped, for a restore in place.
# `sums PLACE...`: for every regular file under those places of the aux tree, `MODE SHA256
# PATH` and a NUL (MODE as `stat -c %a` prints it), for the host to see which of its files
# the build changed or added.
set -e
case "$1" in
    freeze)
        sync
        fsfreeze --freeze "$MICRODIB_SYSROOT"
        ;;
    thaw)
        fsfreeze --unfreeze "$MICRODIB_SYSROOT"
        ;;
    release)
        # The host is about to rewrite DEV's disk: nothing of it may stay mounted or cached.
        shift
        sync
        umount -R "$MICRODIB_SYSROOT"
        blockdev --flushbufs "$@"
        echo 3 > /proc/sys/vm/drop_caches
        ;;
    sums)
        shift
        cd "$MICRODIB_AUX"
        for place in "$@"; do
            [ -e "$place" ] || continue
            # (sh, not bash: no `read -d`; each file named once, whatever its name holds.)
            find "$place" -type f -exec sh -c '
                for f; do
                    sum=$(sha256sum < "$f")
                    printf "%s %s %s\0" "$(stat -c %a -- "$f")" "${sum%% *}" "$f"
                done' sums {} +
        done
        ;;
    *)
        echo "checkpoint.sh: freeze, thaw, release or sums, not '$1'" >&2
        exit 2
        ;;
esac
