package pipes

import (
	"bytes"
	"os"
	"testing"
	"time"
)

func TestReadBuffered(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()                                        // held open: EOF never comes, as with a leftover worker
	data := bytes.Repeat([]byte("0123456789abcdef"), 3000) // 48 000 bytes: more than one read
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	// A reader that a past deadline has already unblocked.
	r.SetReadDeadline(time.Unix(1, 0))
	if _, err := r.Read(make([]byte, 1)); !os.IsTimeout(err) {
		t.Fatalf("read past deadline: %v", err)
	}

	start := time.Now()
	if got := ReadBuffered(r, 1<<20); !bytes.Equal(got, data) {
		t.Fatalf("got %d bytes, want %d", len(got), len(data))
	}
	if got := ReadBuffered(r, 1<<20); len(got) != 0 {
		t.Fatalf("empty pipe: got %d bytes", len(got))
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("ReadBuffered waited %v on an empty pipe", d)
	}

	w.Write(data)
	if got := ReadBuffered(r, 1000); len(got) != 1000 {
		t.Fatalf("limit 1000: got %d bytes", len(got))
	}
}
