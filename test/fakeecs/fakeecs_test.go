package fakeecs_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/bastion-dev/bastion/test/fakeecs"
)

// factsTask is the AWS-FACTS §5 example, byte for byte.
const factsTask = `{"Cluster":"arn:aws:ecs:us-east-1:123456789012:cluster/ops","TaskARN":"arn:aws:ecs:us-east-1:123456789012:task/ops/0f1e2d3c4b5a69788796a5b4c3d2e1f0",
 "Family":"bastion","Revision":"7","AvailabilityZone":"us-east-1a","LaunchType":"FARGATE",
 "Containers":[{"Name":"bastion","DockerId":"0f1e2d3c4b5a69788796a5b4c3d2e1f0-1234567890","Type":"NORMAL"}]}`

func get(t *testing.T, url string) (int, []byte) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func TestMetadata(t *testing.T) {
	s := fakeecs.NewTest(t, fakeecs.DefaultTask())
	if !strings.HasSuffix(s.URI(), "/v4/0f1e2d3c4b5a69788796a5b4c3d2e1f0-1234567890") || !strings.HasPrefix(s.URI(), "http://127.0.0.1:") {
		t.Fatalf("URI = %s", s.URI())
	}
	tests := []struct {
		name, path string
		status     int
		check      func(t *testing.T, body []byte)
	}{
		{"task", "/task", 200, func(t *testing.T, body []byte) {
			var got, want any
			_ = json.Unmarshal(body, &got)
			_ = json.Unmarshal([]byte(factsTask), &want)
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("task =\n%s\nwant\n%s", body, factsTask)
			}
		}},
		{"container", "", 200, func(t *testing.T, body []byte) {
			var c map[string]any
			_ = json.Unmarshal(body, &c)
			if c["DockerId"] != "0f1e2d3c4b5a69788796a5b4c3d2e1f0-1234567890" || c["Name"] != "bastion" {
				t.Fatalf("container = %s", body)
			}
		}},
		{"taskWithTags is not on v4 Fargate", "/taskWithTags", 404, nil},
		{"other path", "/../other", 404, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, body := get(t, s.URI()+tt.path)
			if status != tt.status {
				t.Fatalf("status %d, want %d", status, tt.status)
			}
			if tt.check != nil {
				tt.check(t, body)
			}
		})
	}
	if s.Calls("/task") != 1 {
		t.Errorf("calls = %d", s.Calls("/task"))
	}
}

func TestFailuresAndDelay(t *testing.T) {
	s := fakeecs.NewTest(t, fakeecs.Task{Cluster: "ops", TaskARN: "arn:aws:ecs:us-east-1:123456789012:task/ops/abc", Revision: "1"})
	s.Fail(http.StatusInternalServerError)
	if status, _ := get(t, s.URI()+"/task"); status != 500 {
		t.Fatalf("status %d, want 500", status)
	}
	s.Fail(0)
	var task fakeecs.Task
	_, body := get(t, s.URI()+"/task")
	if err := json.Unmarshal(body, &task); err != nil || task.Cluster != "ops" || len(task.Containers) != 1 {
		t.Fatalf("task = %s (%v)", body, err)
	}

	s.Delay(time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.URI()+"/task", nil)
	start := time.Now()
	if _, err := http.DefaultClient.Do(req); err == nil || time.Since(start) > 5*time.Second {
		t.Fatalf("slow endpoint: err=%v after %v", err, time.Since(start))
	}
	s.Delay(0)
}
