// Package e2e holds end-to-end tests that run the real erofs-blockd binary
// against real clients (nbdinfo, nbdcopy, nbdfuse, qemu-img), the host
// kernel's EROFS driver, and a QEMU guest kernel for /dev/nbdX.
package e2e
