package notify

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)

const (
	aliceARN = "arn:aws:sts::123456789012:assumed-role/Ops/alice"
	aliceSSM = "alice-0a1b2c3d4e5f6a7b8"
	aliceFP  = "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU"
)

func ssmStart() Event {
	return Event{Kind: KindSessionStart, Conn: "c1", Time: t0, User: "alice", Fingerprint: aliceFP,
		Comment: "alice@laptop", Principal: aliceARN, SSMSessionID: aliceSSM, Client: "127.0.0.1:41234"}
}

func keyStart() Event {
	return Event{Kind: KindSessionStart, Conn: "c2", Time: t0, User: "bob", Fingerprint: aliceFP,
		Comment: "bob@ci", Client: "10.0.3.7:50022"}
}

func tunnel(base Event, dest string, at time.Duration) Event {
	base.Kind = KindTunnelOpen
	base.Destination = dest
	base.Time = t0.Add(at)
	return base
}

func build(events ...Event) *message {
	m := &message{}
	for _, e := range events {
		m.add(e.capped())
	}
	return m
}

func TestText(t *testing.T) {
	cert := keyStart()
	cert.Comment, cert.CertID = "", "ops-bob-2025"
	noComment := keyStart()
	noComment.Comment = ""
	noUser := keyStart()
	noUser.User = ""
	v6 := keyStart()
	v6.Client = "[2001:db8::7]:50022"
	hostile := keyStart()
	hostile.User = "<!channel> & co\nsecond line"
	hostile.Comment = "x<https://evil.example|click>\u202ey"
	var many []Event
	many = append(many, ssmStart())
	for i := range maxDestinations + 3 {
		many = append(many, tunnel(ssmStart(), fmt.Sprintf("10.0.0.%d:22", i), time.Millisecond))
	}

	tests := []struct {
		name   string
		events []Event
		want   string
	}{
		{"SSM session names the principal",
			[]Event{ssmStart()},
			"alice (" + aliceARN + ") connected to bastion via SSM session " + aliceSSM + " from 127.0.0.1"},
		{"SSM session with the tunnels right after it",
			[]Event{ssmStart(), tunnel(ssmStart(), "db.internal:5432", 1), tunnel(ssmStart(), "db.internal:5432", 2),
				tunnel(ssmStart(), "cache.internal:6379", 3), tunnel(ssmStart(), "db.internal:5432", 4)},
			"alice (" + aliceARN + ") connected to bastion via SSM session " + aliceSSM +
				" from 127.0.0.1; tunnels: db.internal:5432 ×3, cache.internal:6379"},
		{"no SSM session names the key",
			[]Event{keyStart()},
			"bob (key bob@ci " + aliceFP + ") connected to bastion from 10.0.3.7"},
		{"key without a comment",
			[]Event{noComment},
			"bob (key " + aliceFP + ") connected to bastion from 10.0.3.7"},
		{"certificate names its id",
			[]Event{cert},
			"bob (certificate ops-bob-2025) connected to bastion from 10.0.3.7"},
		{"SSM session without a known principal names the key",
			[]Event{func() Event { e := ssmStart(); e.Principal = ""; return e }()},
			"alice (key alice@laptop " + aliceFP + ") connected to bastion via SSM session " + aliceSSM + " from 127.0.0.1"},
		{"IPv6 client",
			[]Event{v6},
			"bob (key bob@ci " + aliceFP + ") connected to bastion from 2001:db8::7"},
		{"empty user",
			[]Event{noUser},
			"(no user name) (key bob@ci " + aliceFP + ") connected to bastion from 10.0.3.7"},
		{"one tunnel on a connection already announced",
			[]Event{tunnel(ssmStart(), "db.internal:5432", 0)},
			"alice (" + aliceARN + ") opened a tunnel on bastion via SSM session " + aliceSSM + " from 127.0.0.1: db.internal:5432"},
		{"several tunnels",
			[]Event{tunnel(keyStart(), "db.internal:5432", 0), tunnel(keyStart(), "db.internal:5432", 1),
				tunnel(keyStart(), "[2001:db8::1]:443", 2)},
			"bob (key bob@ci " + aliceFP + ") opened 3 tunnels on bastion from 10.0.3.7: db.internal:5432 ×2, [2001:db8::1]:443"},
		{"destinations beyond the limit are counted",
			many,
			"alice (" + aliceARN + ") connected to bastion via SSM session " + aliceSSM + " from 127.0.0.1; tunnels: " +
				func() string {
					var s []string
					for i := range maxDestinations {
						s = append(s, fmt.Sprintf("10.0.0.%d:22", i))
					}
					return strings.Join(s, ", ")
				}() + ", and 3 more"},
		{"Slack control characters escaped, one line, no bidi override",
			[]Event{hostile},
			"&lt;!channel&gt; &amp; co\uFFFDsecond line (key x&lt;https://evil.example|click&gt;\uFFFDy " + aliceFP +
				") connected to bastion from 10.0.3.7"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := text(build(tt.events...), "bastion")
			if got != tt.want {
				t.Errorf("text:\n got %s\nwant %s", got, tt.want)
			}
			if strings.ContainsAny(got, "\n\r<>") {
				t.Errorf("text is not one safe line: %q", got)
			}
		})
	}
}

func TestTextBounded(t *testing.T) {
	e := keyStart()
	e.User = strings.Repeat("u", 100_000)
	e.CertID = strings.Repeat("é", 100_000)
	got := text(build(e), "bastion")
	if len(got) > maxTextLen+len("…") {
		t.Errorf("text is %d bytes", len(got))
	}
	if !strings.Contains(got, "…") {
		t.Errorf("cut not marked: %.80q", got)
	}
	if !strings.HasPrefix(got, strings.Repeat("u", 10)) {
		t.Errorf("text = %.80q", got)
	}
}

func TestEventJSON(t *testing.T) {
	cert := keyStart()
	cert.CertID = "ops-bob-2025"
	tests := []struct {
		name   string
		events []Event
		want   map[string]any // the whole `event` object
	}{
		{"SSM session start with tunnels",
			[]Event{ssmStart(), tunnel(ssmStart(), "db.internal:5432", 1), tunnel(ssmStart(), "db.internal:5432", 2),
				tunnel(ssmStart(), "cache.internal:6379", 3)},
			map[string]any{
				"kind": "session_start", "bastion": "bastion-prod", "conn": "c1", "user": "alice",
				"fingerprint": aliceFP, "comment": "alice@laptop", "principal": aliceARN,
				"ssm_session_id": aliceSSM, "client": "127.0.0.1:41234", "time": "2025-06-01T12:00:00Z",
				"tunnels": 3.0,
				"destinations": []any{
					map[string]any{"destination": "db.internal:5432", "count": 2.0},
					map[string]any{"destination": "cache.internal:6379", "count": 1.0},
				},
			}},
		{"key session start without tunnels: empty list, no SSM fields",
			[]Event{keyStart()},
			map[string]any{
				"kind": "session_start", "bastion": "bastion-prod", "conn": "c2", "user": "bob",
				"fingerprint": aliceFP, "comment": "bob@ci", "client": "10.0.3.7:50022",
				"time": "2025-06-01T12:00:00Z", "tunnels": 0.0, "destinations": []any{},
			}},
		{"certificate",
			[]Event{cert},
			map[string]any{
				"kind": "session_start", "bastion": "bastion-prod", "conn": "c2", "user": "bob",
				"fingerprint": aliceFP, "comment": "bob@ci", "cert_id": "ops-bob-2025", "client": "10.0.3.7:50022",
				"time": "2025-06-01T12:00:00Z", "tunnels": 0.0, "destinations": []any{},
			}},
		{"tunnels only: time of the first",
			[]Event{tunnel(keyStart(), "db:5432", 1500*time.Millisecond), tunnel(keyStart(), "db:5432", 2*time.Second)},
			map[string]any{
				"kind": "tunnel_open", "bastion": "bastion-prod", "conn": "c2", "user": "bob",
				"fingerprint": aliceFP, "comment": "bob@ci", "client": "10.0.3.7:50022",
				"time": "2025-06-01T12:00:01.5Z", "tunnels": 2.0,
				"destinations": []any{map[string]any{"destination": "db:5432", "count": 2.0}},
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := build(tt.events...)
			raw, err := render(m, "bastion-prod")
			if err != nil {
				t.Fatal(err)
			}
			var got map[string]any
			if err := json.Unmarshal(raw, &got); err != nil {
				t.Fatalf("body is not JSON: %v\n%s", err, raw)
			}
			if len(got) != 2 || got["text"] != text(m, "bastion-prod") {
				t.Errorf("body keys/text: %s", raw)
			}
			if !reflect.DeepEqual(got["event"], tt.want) {
				t.Errorf("event:\n got %v\nwant %v", got["event"], tt.want)
			}
		})
	}
}

func TestEventJSONOmitted(t *testing.T) {
	m := build(ssmStart())
	for i := range maxDestinations + 7 {
		m.add(tunnel(ssmStart(), fmt.Sprintf("h%d:1", i), 0))
	}
	raw, err := render(m, "b")
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Event struct {
			Tunnels      int           `json:"tunnels"`
			Destinations []Destination `json:"destinations"`
			Omitted      int           `json:"destinations_omitted"`
		} `json:"event"`
	}
	if err := json.Unmarshal(raw, &got); err != nil {
		t.Fatal(err)
	}
	if got.Event.Tunnels != maxDestinations+7 || len(got.Event.Destinations) != maxDestinations || got.Event.Omitted != 7 {
		t.Errorf("tunnels %d, destinations %d, omitted %d", got.Event.Tunnels, len(got.Event.Destinations), got.Event.Omitted)
	}
}
