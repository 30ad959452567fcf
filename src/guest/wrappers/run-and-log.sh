#!/bin/bash
# microdib: runs run-part.sh with stdout and stderr merged, appended to the build log and passed
# on. Usage: run-and-log.sh LOG PHASE TARGET_DIR SCRIPT NEW_WD SOURCE_DIE (PHASE - : no
# "Running" line, for install-packages, which logs its own).
log=$1
phase=$2
shift 2
if [ "$phase" != - ]; then
    echo "Running $phase/$2..." >> "$log"
fi
"$(dirname "$0")/run-part.sh" "$@" 2>&1 | tee -a "$log"
exit "${PIPESTATUS[0]}"
