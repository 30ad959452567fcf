#!/bin/bash
# microdib: runs one element script. Usage: run-part.sh TARGET_DIR SCRIPT NEW_WD SOURCE_DIE
# environment.d is read again before every script (earlier scripts may have added files), and
# set -e makes a failing environment file stop the script, as in virt-dib and diskimage-builder.
set -e
if [ "${DIB_DEBUG_TRACE:-0}" -gt 0 ]; then
    set -x
fi
target_dir=$1
script=$2
new_wd=$3
if [ "$4" = 1 ]; then
    # Outside the chroot the library is at hand; its functions are not exported (as in virt-dib).
    source "$_LIB/die"
fi
env_dir=$target_dir/../environment.d
if [ -d "$env_dir" ]; then
    for env_file in $(find "$env_dir" -maxdepth 1 -xtype f | grep -E '/[0-9A-Za-z_.-]+$' | LANG=C sort); do
        source "$env_file"
    done
fi
if [ -n "$new_wd" ]; then
    cd "$new_wd"
fi
# exec: on the host, the script itself is then microdib's child and dies with it.
exec "$target_dir/$script"
