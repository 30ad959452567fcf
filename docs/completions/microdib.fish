complete -c microdib -l accel -d 'How to run the build VM (default: auto)' -r
complete -c microdib -l arch -d 'Output architecture' -r
complete -c microdib -s B -d 'Base path of diskimage-builder library' -r
complete -c microdib -l cache-dir -d 'Location of the phase cache' -r
complete -c microdib -l cache-max-age -d 'Reuse phases built less long ago (default: 1d)' -r
complete -c microdib -l cache-max-size -d 'Bound of the phase cache (default: 20G)' -r
complete -c microdib -l debug -d 'Set debug level' -r
complete -c microdib -l docker-target -d 'Repo and tag for docker' -r
complete -c microdib -l drive -d 'Optional drive for caches' -r
complete -c microdib -l drive-format -d 'Format of optional drive' -r
complete -c microdib -s p -l element-path -d 'Add a new elements location' -r
complete -c microdib -l envvar -d 'Carry/set this environment variable' -r
complete -c microdib -l exclude-element -d 'Exclude the specified element' -r
complete -c microdib -l exclude-script -d 'Exclude the specified script' -r
complete -c microdib -l extra-packages -d 'Add extra packages to install' -r
complete -c microdib -l formats -d 'Output formats' -r
complete -c microdib -l fs-type -d 'Filesystem for the image' -r
complete -c microdib -l image-cache -d 'Location for cached images' -r
complete -c microdib -l install-type -d 'Installation type' -r
complete -c microdib -s m -l memsize -d 'Set memory size' -r
complete -c microdib -l machine-readable -d 'Make output machine readable' -r
complete -c microdib -l mkfs-options -d 'Add mkfs options' -r
complete -c microdib -l name -d 'Name of the image' -r
complete -c microdib -l python -d 'Set Python interpreter' -r
complete -c microdib -l qemu-img-options -d 'Add qemu-img options' -r
complete -c microdib -l ramdisk-element -d 'Main element for building ramdisks' -r
complete -c microdib -l root-label -d 'Label for the root fs' -r
complete -c microdib -l size -d 'Set output disk size' -r
complete -c microdib -l smp -d 'Set number of vCPUs' -r
complete -c microdib -l squashfs-compression -d 'Compression of the squashfs output (default: xz)' -r
complete -c microdib -l cache-clear -d 'Remove the phase cache’s entries and exit'
complete -c microdib -l cache-list -d 'List the phase cache’s entries and exit'
complete -c microdib -l checksum -d 'Generate MD5 and SHA256 checksum files'
complete -c microdib -l color -l colors -l colour -l colours -d 'Use ANSI colour sequences even if not tty'
complete -c microdib -l debug-gc -d ''
complete -c microdib -l help -d 'Display brief help'
complete -c microdib -l network -d 'Enable appliance network (default)'
complete -c microdib -l network-host-loopback -d 'Let the build VM reach this host’s local services'
complete -c microdib -l no-cache -d 'Build every phase, keep no checkpoint'
complete -c microdib -l no-delete-on-failure -d 'Don’t delete output file on failure'
complete -c microdib -l no-network -d 'Disable appliance network'
complete -c microdib -s q -l quiet -d 'Don’t print progress messages'
complete -c microdib -l ramdisk -d 'Switch to a ramdisk build'
complete -c microdib -l skip-base -d 'Skip the inclusion of the ‘base’ element'
complete -c microdib -s u -d 'Do not compress the qcow2 image'
complete -c microdib -s V -l version -d 'Display version and exit'
complete -c microdib -s v -l verbose -d 'Enable debugging messages'
complete -c microdib -l wrap -d 'Wrap log messages even if not tty'
complete -c microdib -s x -d 'Enable tracing of appliance commands'
complete -c microdib -l short-options -d ''
complete -c microdib -l long-options -d ''
