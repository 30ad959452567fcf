# A phase checkpoint's guest side. `freeze`: everything the root's file system holds is written
# to its disk, which then stays still while the host copies it. `thaw`: the build goes on.
# `sums PLACE...`: the sha256 of every regular file under those places of the aux tree, as
# `sha256sum -z` prints them (each record ends in a NUL), for the host to see which of its
# files the build changed.
set -e
case "$1" in
    freeze)
        sync
        fsfreeze --freeze "$MICRODIB_SYSROOT"
        ;;
    thaw)
        fsfreeze --unfreeze "$MICRODIB_SYSROOT"
        ;;
    sums)
        shift
        cd "$MICRODIB_AUX"
        for place in "$@"; do
            [ -e "$place" ] || continue
            find "$place" -type f -print0 | xargs -0 -r sha256sum -z
        done
        ;;
    *)
        echo "checkpoint.sh: freeze, thaw or sums, not '$1'" >&2
        exit 2
        ;;
esac
