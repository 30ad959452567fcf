#!/bin/bash
# microdib: runs one extra-data.d script on the host, as the invoking user, with the host's
# environment. Usage: run-part-extra.sh ELEMENT_INFO TARGET_DIR SCRIPT
# ELEMENT_INFO defines IMAGE_ELEMENT_YAML and get_image_element_array (exported to the script);
# the rest is run-part.sh's: environment.d from the image's copy, then $_LIB/die.
set -e
eval "$(cat "$1")"
exec bash "$(dirname "$0")/run-part.sh" "$2" "$3" "" 1
