// Package fakeecs is a stand-in for ECS as a task sees it: the task
// metadata endpoint v4 ($ECS_CONTAINER_METADATA_URI_V4), which only exists
// inside ECS tasks, serving <uri> (this container) and <uri>/task with the
// shapes Fargate returns (everything else is 404); and, on the same server,
// the ECS API's DescribeTasks (see api.go; the wire is test/fakeaws's).
package fakeecs

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bastion-dev/bastion/test/fakeaws"
)

// Container is one entry of Task.Containers (fields the product may read).
type Container struct {
	Name          string            `json:"Name"`
	DockerID      string            `json:"DockerId"`
	DockerName    string            `json:"DockerName,omitempty"`
	Image         string            `json:"Image,omitempty"`
	Type          string            `json:"Type"`
	DesiredStatus string            `json:"DesiredStatus,omitempty"`
	KnownStatus   string            `json:"KnownStatus,omitempty"`
	ContainerARN  string            `json:"ContainerARN,omitempty"`
	Labels        map[string]string `json:"Labels,omitempty"`
}

// Task is the /task document. Cluster is an ARN (or a bare name, which ECS
// also returns on some platforms); Revision is a string as ECS sends it.
type Task struct {
	Cluster          string      `json:"Cluster"`
	TaskARN          string      `json:"TaskARN"`
	Family           string      `json:"Family"`
	Revision         string      `json:"Revision"`
	DesiredStatus    string      `json:"DesiredStatus,omitempty"`
	KnownStatus      string      `json:"KnownStatus,omitempty"`
	AvailabilityZone string      `json:"AvailabilityZone"`
	LaunchType       string      `json:"LaunchType"`
	Containers       []Container `json:"Containers"`
}

// DefaultTask is the Fargate task from AWS-FACTS §5.
func DefaultTask() Task {
	return Task{
		Cluster:          "arn:aws:ecs:us-east-1:123456789012:cluster/ops",
		TaskARN:          "arn:aws:ecs:us-east-1:123456789012:task/ops/0f1e2d3c4b5a69788796a5b4c3d2e1f0",
		Family:           "bastion",
		Revision:         "7",
		AvailabilityZone: "us-east-1a",
		LaunchType:       "FARGATE",
		Containers: []Container{{
			Name:     "bastion",
			DockerID: "0f1e2d3c4b5a69788796a5b4c3d2e1f0-1234567890",
			Type:     "NORMAL",
		}},
	}
}

// Server serves one task's metadata.
type Server struct {
	srv *httptest.Server

	mu     sync.Mutex
	task   Task
	status int           // non-zero: answer every metadata request with this status
	delay  time.Duration // wait before answering metadata (ends with the request)
	calls  map[string]int

	// The API side (api.go).
	api      *fakeaws.Endpoint
	statuses map[string]string // task ARN → lastStatus
}

// New starts a server for task. The container served at URI() is the first
// NORMAL container (else the first one); a task without containers gets the
// default one.
func New(task Task) *Server {
	if len(task.Containers) == 0 {
		task.Containers = DefaultTask().Containers
	}
	s := &Server{task: task, calls: map[string]int{}, statuses: map[string]string{}}
	s.api = s.newAPI()
	s.srv = httptest.NewServer(http.HandlerFunc(s.serve))
	return s
}

// NewTest starts a server and closes it when the test ends.
func NewTest(t testing.TB, task Task) *Server {
	s := New(task)
	t.Cleanup(s.Close)
	return s
}

// Close stops the server.
func (s *Server) Close() { s.srv.Close() }

// URI is the value for ECS_CONTAINER_METADATA_URI_V4.
func (s *Server) URI() string { return s.srv.URL + s.basePath() }

// SetTask replaces the served task.
func (s *Server) SetTask(task Task) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.task = task
}

// Fail makes every metadata request answer status (e.g. 500); 0 restores normal answers.
func (s *Server) Fail(status int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.status = status
}

// Delay makes every metadata answer wait d (0 = none), ending early if the client gives up.
func (s *Server) Delay(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.delay = d
}

// Calls counts requests per path suffix: "" (container), "/task", or the raw
// path for anything else.
func (s *Server) Calls(suffix string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[suffix]
}

func (s *Server) self() Container {
	for _, c := range s.task.Containers {
		if c.Type == "NORMAL" {
			return c
		}
	}
	return s.task.Containers[0]
}

func (s *Server) basePath() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return "/v4/" + s.self().DockerID
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodPost && r.URL.Path == "/" && r.Header.Get("X-Amz-Target") != "" {
		s.api.ServeAPI(w, r)
		return
	}
	base := s.basePath()
	suffix, ok := strings.CutPrefix(r.URL.Path, base)
	if !ok {
		suffix = r.URL.Path
	}
	s.mu.Lock()
	s.calls[suffix]++
	status, delay, task := s.status, s.delay, s.task
	s.mu.Unlock()

	if delay > 0 {
		select {
		case <-time.After(delay):
		case <-r.Context().Done():
			return
		}
	}
	if status != 0 {
		http.Error(w, http.StatusText(status), status)
		return
	}
	if !ok || r.Method != http.MethodGet {
		http.NotFound(w, r)
		return
	}
	switch suffix {
	case "", "/":
		s.mu.Lock()
		c := s.containerDoc(task)
		s.mu.Unlock()
		fakeaws.WriteJSON(w, http.StatusOK, c)
	case "/task":
		fakeaws.WriteJSON(w, http.StatusOK, task)
	default: // /stats, /task/stats are real but unused; /taskWithTags does not exist on v4 tasks
		http.NotFound(w, r)
	}
}

// containerDoc is the <uri> document: the container with the labels ECS adds.
func (s *Server) containerDoc(task Task) Container {
	c := s.self()
	if c.Labels == nil {
		c.Labels = map[string]string{
			"com.amazonaws.ecs.cluster":                 task.Cluster,
			"com.amazonaws.ecs.container-name":          c.Name,
			"com.amazonaws.ecs.task-arn":                task.TaskARN,
			"com.amazonaws.ecs.task-definition-family":  task.Family,
			"com.amazonaws.ecs.task-definition-version": task.Revision,
		}
	}
	if c.DockerName == "" {
		c.DockerName = c.Name
	}
	if c.KnownStatus == "" {
		c.KnownStatus = "RUNNING"
	}
	if c.DesiredStatus == "" {
		c.DesiredStatus = "RUNNING"
	}
	return c
}
