// Package pipes holds what a reader of a child's output needs (today the
// SSM lifecycle's agent output): the pipe's write end may be held open by
// processes the child left behind, so EOF is never a given.
package pipes

import (
	"os"
	"time"

	"github.com/bastion-dev/bastion/internal/rawfd"
)

// DrainLimit is what a reader should take at most with ReadBuffered: a
// process the child left behind may keep the pipe filling.
const DrainLimit = 1 << 20

// ReadBuffered returns what is in the pipe r now, at most limit bytes,
// without waiting for more. It clears r's read deadline first: a reader
// that was unblocked by a deadline after the child was reaped uses it to
// take what the child wrote before exiting, all of which is in the pipe.
func ReadBuffered(r *os.File, limit int) []byte {
	if err := r.SetReadDeadline(time.Time{}); err != nil {
		return nil
	}
	rc, err := r.SyscallConn()
	if err != nil {
		return nil
	}
	var out []byte
	buf := make([]byte, 32<<10)
	for len(out) < limit {
		var n int
		var rerr error
		// Returning true never parks: an empty pipe ends the loop (EAGAIN).
		if err := rc.Read(func(fd uintptr) bool { n, rerr = rawfd.Read(fd, buf); return true }); err != nil || rerr != nil || n <= 0 {
			break
		}
		out = append(out, buf[:n]...)
	}
	if len(out) > limit {
		out = out[:limit]
	}
	return out
}
