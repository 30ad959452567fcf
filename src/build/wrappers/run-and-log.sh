#!/bin/bash
# microdib: runs run-part.sh with stdout and stderr merged, appended to the build log and passed
# on. Usage: run-and-log.sh LOG PHASE TARGET_DIR SCRIPT NEW_WD SOURCE_DIE
log=$1
phase=$2
shift 2
echo "Running $phase/$2..." >> "$log"
"$(dirname "$0")/run-part.sh" "$@" 2>&1 | tee -a "$log"
exit "${PIPESTATUS[0]}"
