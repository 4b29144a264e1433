//! VF pool tests against sysfs-shaped directories.
