package cache

import "syscall"

const mapPopulate = syscall.MAP_POPULATE
