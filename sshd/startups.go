package sshd

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
)

// Startups limits unauthenticated connections the way sshd's MaxStartups
// does: below Begin every connection is admitted; from Begin on, each new
// one is refused with probability Rate% rising linearly to 100% at Full.
// Random early drop keeps a flood from locking everyone out at one cliff:
// a connection that arrives during it still has a chance.
type Startups struct {
	Begin, Rate, Full int
}

func (l Startups) String() string {
	if l.Begin == l.Full {
		return strconv.Itoa(l.Full)
	}
	return fmt.Sprintf("%d:%d:%d", l.Begin, l.Rate, l.Full)
}

// ParseStartups reads "begin:rate:full" or a single number (a hard limit),
// as sshd_config(5) MaxStartups.
func ParseStartups(s string) (Startups, error) {
	parts := strings.Split(strings.TrimSpace(s), ":")
	nums := make([]int, len(parts))
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 {
			return Startups{}, errors.New("want start:rate:full (like 10:30:100) or one number")
		}
		nums[i] = n
	}
	var l Startups
	switch len(nums) {
	case 1:
		l = Startups{Begin: nums[0], Rate: 100, Full: nums[0]}
	case 3:
		l = Startups{Begin: nums[0], Rate: nums[1], Full: nums[2]}
	default:
		return Startups{}, errors.New("want start:rate:full (like 10:30:100) or one number")
	}
	switch {
	case l.Full < 1:
		return Startups{}, errors.New("full must be at least 1")
	case l.Begin > l.Full:
		return Startups{}, errors.New("start must not exceed full")
	case l.Rate < 1 || l.Rate > 100:
		return Startups{}, errors.New("rate must be 1-100 (percent)")
	}
	return l, nil
}

// refuse says whether a new connection is refused when n are already
// waiting to authenticate: sshd.c should_drop_startup.
func (l Startups) refuse(n int) bool {
	switch {
	case n >= l.Full:
		return true
	case n < l.Begin:
		return false
	}
	p := 100 - l.Rate
	p *= n - l.Begin
	p /= l.Full - l.Begin
	p += l.Rate
	return rand.IntN(100) < p
}
