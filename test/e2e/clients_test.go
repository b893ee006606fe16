package e2e

import (
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	"github.com/bastion-dev/bastion/test/harness"
)

var (
	libssh2Once sync.Once
	libssh2Bin  string
	libssh2Err  error
	libssh2Out  []byte
)

// libssh2Client compiles test/clients/libssh2_echo.c once per test run:
// libssh2 is a C library, so its client is a few lines of C (gcc and
// libssh2-1-dev, which .ci/run installs).
func libssh2Client(t *testing.T) string {
	t.Helper()
	harness.RequireTools(t, "gcc")
	libssh2Once.Do(func() {
		dir, err := exec.Command("mktemp", "-d").Output()
		if err != nil {
			libssh2Err = err
			return
		}
		libssh2Bin = filepath.Join(string(dir[:len(dir)-1]), "libssh2_echo")
		src := filepath.Join(harness.ModuleRoot(t), "test", "clients", "libssh2_echo.c")
		libssh2Out, libssh2Err = exec.Command("gcc", "-O1", "-o", libssh2Bin, src, "-lssh2").CombinedOutput()
	})
	if libssh2Err != nil {
		t.Fatalf("building the libssh2 client (needs gcc and libssh2-1-dev): %v\n%s", libssh2Err, libssh2Out)
	}
	return libssh2Bin
}
