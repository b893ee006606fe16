package fakessm

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/bastion-dev/bastion/test/fakeaws"
)

// Session is a Session Manager session as DescribeSessions reports it
// (AWS-FACTS §7). Tests start and end sessions; the API only reads them.
type Session struct {
	SessionID          string    `json:"SessionId"`
	Target             string    `json:"Target"`
	Status             string    `json:"Status"`
	StartDate          time.Time `json:"StartDate"`
	EndDate            time.Time `json:"EndDate,omitzero"`
	DocumentName       string    `json:"DocumentName,omitempty"`
	Owner              string    `json:"Owner"` // ARN of the principal that started it
	Reason             string    `json:"Reason,omitempty"`
	Details            string    `json:"Details,omitempty"`
	MaxSessionDuration string    `json:"MaxSessionDuration,omitempty"`
	AccessType         string    `json:"AccessType,omitempty"`
}

// Session statuses.
const (
	SessionConnected    = "Connected"
	SessionConnecting   = "Connecting"
	SessionDisconnected = "Disconnected"
	SessionTerminating  = "Terminating"
	SessionTerminated   = "Terminated"
	SessionFailed       = "Failed"
)

// activeStatuses are the statuses State "Active" lists; the rest are
// "History".
var activeStatuses = []string{SessionConnected, SessionConnecting, SessionDisconnected, SessionTerminating}

var sessionStatuses = append(append([]string(nil), activeStatuses...), SessionTerminated, SessionFailed)

// sessionFilterKeys are the keys DescribeSessions accepts (SessionFilterKey).
var sessionFilterKeys = []string{"InvokedAfter", "InvokedBefore", "Target", "Owner", "Status", "SessionId", "AccessType"}

// StartSession records a session as StartSession would. Empty fields get:
// SessionId "<last part of Owner>-<17 hex>" (the caller-chosen prefix of a
// real id), Status Connected, StartDate now, DocumentName
// AWS-StartSSHSession, AccessType Standard. Owner is required.
func (s *Server) StartSession(in Session) (Session, error) {
	if in.Owner == "" {
		return Session{}, fmt.Errorf("fakessm: a session needs an Owner")
	}
	if in.SessionID == "" {
		name := in.Owner[strings.LastIndexAny(in.Owner, "/:")+1:]
		in.SessionID = name + "-" + randomHex17()
	}
	if in.Status == "" {
		in.Status = SessionConnected
	}
	if !slices.Contains(sessionStatuses, in.Status) {
		return Session{}, fmt.Errorf("fakessm: session status %q", in.Status)
	}
	if in.DocumentName == "" {
		in.DocumentName = "AWS-StartSSHSession"
	}
	if in.AccessType == "" {
		in.AccessType = "Standard"
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if in.StartDate.IsZero() {
		in.StartDate = s.opts.Clock()
	}
	if _, dup := s.sessions[in.SessionID]; dup {
		return Session{}, fmt.Errorf("fakessm: session %s exists", in.SessionID)
	}
	c := in
	s.sessions[in.SessionID] = &c
	return in, nil
}

// EndSession terminates a session: Status Terminated, EndDate now. It moves
// from State Active to History.
func (s *Server) EndSession(id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	se, ok := s.sessions[id]
	if !ok {
		return fmt.Errorf("fakessm: no session %s", id)
	}
	se.Status, se.EndDate = SessionTerminated, s.opts.Clock()
	return nil
}

// Sessions returns every session, oldest first.
func (s *Server) Sessions() []Session {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sortedSessions()
}

// sortedSessions; s.mu is held.
func (s *Server) sortedSessions() []Session {
	out := make([]Session, 0, len(s.sessions))
	for _, se := range s.sessions {
		out = append(out, *se)
	}
	sort.Slice(out, func(i, j int) bool { return sessionBefore(&out[i], &out[j]) })
	return out
}

// sessionBefore is the order sessions are listed in: oldest first.
func sessionBefore(a, b *Session) bool {
	if !a.StartDate.Equal(b.StartDate) {
		return a.StartDate.Before(b.StartDate)
	}
	return a.SessionID < b.SessionID
}

// describeSessions lists the sessions of State (Active or History) that
// match every filter, oldest first, in pages of MaxResults (1–200, default
// 20; the model documents no default).
func (s *Server) describeSessions(c *fakeaws.Call) (any, *fakeaws.Error) {
	var in struct {
		State      *string
		MaxResults *int
		NextToken  *string
		Filters    []struct {
			Key   *string `json:"key"`
			Value *string `json:"value"`
		}
	}
	if e := c.Decode(&in); e != nil {
		return nil, e
	}
	switch {
	case in.State == nil:
		return nil, fakeaws.ValidationError(nil, "state", "Member must not be null")
	case *in.State != "Active" && *in.State != "History":
		return nil, fakeaws.ValidationError(*in.State, "state", "Member must satisfy enum value set: [Active, History]")
	case len(in.Filters) > 6:
		return nil, fakeaws.ValidationError(len(in.Filters), "filters", "Member must have length less than or equal to 6")
	}
	limit := 20
	if in.MaxResults != nil {
		if *in.MaxResults < 1 || *in.MaxResults > 200 {
			return nil, fakeaws.ValidationError(*in.MaxResults, "maxResults", "Member must have value between 1 and 200")
		}
		limit = *in.MaxResults
	}
	var filters []filter
	for i, f := range in.Filters {
		at := fmt.Sprintf("filters.%d.member", i+1)
		switch {
		case f.Key == nil:
			return nil, fakeaws.ValidationError(nil, at+".key", "Member must not be null")
		case !slices.Contains(sessionFilterKeys, *f.Key):
			return nil, fakeaws.ValidationError(*f.Key, at+".key",
				"Member must satisfy enum value set: [InvokedAfter, InvokedBefore, Target, Owner, Status, SessionId, AccessType]")
		case f.Value == nil:
			return nil, fakeaws.ValidationError(nil, at+".value", "Member must not be null")
		case *f.Value == "" || strLen(*f.Value) > 400:
			return nil, fakeaws.ValidationError(*f.Value, at+".value", "Member must have length between 1 and 400")
		}
		if *f.Key == "InvokedAfter" || *f.Key == "InvokedBefore" {
			if _, err := time.Parse(time.RFC3339, *f.Value); err != nil {
				// The service's exact answer is unconfirmed.
				return nil, fakeaws.ValidationError(*f.Value, at+".value", "Member must be a timestamp such as 2024-08-29T00:00:00Z")
			}
		}
		filters = append(filters, filter{*f.Key, []string{*f.Value}})
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	var matched []Session
	for _, se := range s.sortedSessions() {
		if slices.Contains(activeStatuses, se.Status) == (*in.State == "Active") && sessionMatches(se, filters) {
			matched = append(matched, se)
		}
	}
	items, next, perr := page(matched, in.NextToken, limit, func(se Session) string { return se.SessionID },
		func(last string) (func(Session) bool, bool) {
			l, ok := s.sessions[last] // sessions are never removed
			return func(se Session) bool { return sessionBefore(l, &se) }, ok
		})
	if perr != nil {
		return nil, perr
	}
	list := make([]map[string]any, 0, len(items))
	for _, se := range items {
		m := map[string]any{
			"SessionId": se.SessionID, "Target": se.Target, "Status": se.Status, "StartDate": fakeaws.Epoch(se.StartDate),
			"DocumentName": se.DocumentName, "Owner": se.Owner, "AccessType": se.AccessType,
		}
		if !se.EndDate.IsZero() {
			m["EndDate"] = fakeaws.Epoch(se.EndDate)
		}
		for k, v := range map[string]string{"Reason": se.Reason, "Details": se.Details, "MaxSessionDuration": se.MaxSessionDuration} {
			if v != "" {
				m[k] = v
			}
		}
		list = append(list, m)
	}
	out := map[string]any{"Sessions": list}
	if next != "" {
		out["NextToken"] = next
	}
	return out, nil
}

func sessionMatches(se Session, filters []filter) bool {
	for _, f := range filters {
		v := f.values[0]
		var ok bool
		switch f.key {
		case "InvokedAfter":
			t, _ := time.Parse(time.RFC3339, v)
			ok = !se.StartDate.Before(t)
		case "InvokedBefore":
			t, _ := time.Parse(time.RFC3339, v)
			ok = se.StartDate.Before(t)
		case "Target":
			ok = se.Target == v
		case "Owner":
			ok = se.Owner == v
		case "Status":
			ok = se.Status == v
		case "SessionId":
			ok = se.SessionID == v
		case "AccessType":
			ok = se.AccessType == v
		}
		if !ok {
			return false
		}
	}
	return true
}
