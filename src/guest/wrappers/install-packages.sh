#!/bin/bash
# --extra-packages: diskimage-builder's install-packages with the packages listed (space
# separated, as given) in extra-packages beside this script; run in the chroot right after
# pre-install.d.
set -e
# shellcheck disable=SC2046
install-packages $(cat "$(dirname "$0")/extra-packages")
