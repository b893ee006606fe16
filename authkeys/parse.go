package authkeys

import (
	"errors"
	"reflect"
	"slices"

	"github.com/bastion-dev/bastion/sshd"
)

// ErrNoKeys rejects a version without a single key: applying it would lock
// everyone out, which is never what an edit meant.
var ErrNoKeys = errors.New("no keys (only blank lines or comments): an empty set would lock everyone out")

// errNoText rejects a secret version stored as SecretBinary.
var errNoText = errors.New("the secret holds SecretBinary, not SecretString: store the authorized_keys text (or its base64) as the secret's text")

// RejectError is why a version was not applied. Line is the 1-based line
// of the decoded text that was refused (0 when the version as a whole
// was). It never carries the content.
type RejectError struct {
	Line int
	Err  error
}

func (e *RejectError) Error() string { return e.Err.Error() }
func (e *RejectError) Unwrap() error { return e.Err }

// parse turns one version's content into keys, whole or not at all: one
// bad line rejects the version, and so does a version with no key.
func parse(decode func(name, value string) ([]byte, error), variable string, r reading) ([]sshd.AuthorizedKey, *RejectError) {
	if r.noText {
		return nil, &RejectError{Err: errNoText}
	}
	text, err := decode(variable, string(r.content))
	var keys []sshd.AuthorizedKey
	if err == nil {
		keys, err = sshd.ParseAuthorizedKeys(text)
	}
	if err != nil {
		var le *sshd.LineError // a bad line, found by the decoder or the parser
		if errors.As(err, &le) {
			return nil, &RejectError{Line: le.Line, Err: err}
		}
		return nil, &RejectError{Err: err}
	}
	if len(keys) == 0 {
		return nil, &RejectError{Err: ErrNoKeys}
	}
	return keys, nil
}

// diff compares two sets by key fingerprint, for the log: keys only in
// next, keys only in prev, and keys in both whose lines differ (options or
// comment).
func diff(prev, next []sshd.AuthorizedKey) (added, removed, changed []string) {
	group := func(keys []sshd.AuthorizedKey) map[string][]sshd.AuthorizedKey {
		m := map[string][]sshd.AuthorizedKey{}
		for _, k := range keys {
			m[k.Fingerprint] = append(m[k.Fingerprint], k)
		}
		return m
	}
	p, n := group(prev), group(next)
	added, removed, changed = []string{}, []string{}, []string{} // [] in the log, not null
	for fp, nk := range n {
		pk, ok := p[fp]
		switch {
		case !ok:
			added = append(added, fp)
		case !sameLines(pk, nk):
			changed = append(changed, fp)
		}
	}
	for fp := range p {
		if _, ok := n[fp]; !ok {
			removed = append(removed, fp)
		}
	}
	slices.Sort(added)
	slices.Sort(removed)
	slices.Sort(changed)
	return added, removed, changed
}

// sameLines compares what a key's lines say (comment, options), not where
// they stand: moving a line is no change.
func sameLines(a, b []sshd.AuthorizedKey) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].Comment != b[i].Comment || !reflect.DeepEqual(a[i].Options, b[i].Options) {
			return false
		}
	}
	return true
}
