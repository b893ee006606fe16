package fakeecs

import (
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/bastion-dev/bastion/test/fakeaws"
)

// The ECS API side of the fake: DescribeTasks, spoken as the real service
// speaks it (AWS JSON 1.1, `POST /` with `X-Amz-Target:
// AmazonEC2ContainerServiceV20141113.DescribeTasks`, SigV4 service name
// "ecs", `{"__type","message"}` errors), reached by the real SDK through
// AWS_ENDPOINT_URL_ECS = URL(). The served task is RUNNING; other tasks are
// known once SetTaskStatus names them, and unknown ones come back as
// failures with reason MISSING, as ECS answers for tasks it has forgotten
// (it keeps stopped tasks for about an hour).

// Credentials and region the API accepts (fakeaws's defaults, the same as
// test/fakessm's, since one bastion signs for both).
const (
	DefaultAccessKeyID     = fakeaws.DefaultAccessKeyID
	DefaultSecretAccessKey = fakeaws.DefaultSecretAccessKey
	DefaultRegion          = fakeaws.DefaultRegion
)

// Task statuses (lastStatus).
const (
	StatusRunning = "RUNNING"
	StatusStopped = "STOPPED"
)

// SetTaskStatus makes DescribeTasks report taskARN (in the served task's
// cluster) with lastStatus status; "" forgets it again (MISSING).
func (s *Server) SetTaskStatus(taskARN, status string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if status == "" {
		delete(s.statuses, taskARN)
		return
	}
	s.statuses[taskARN] = status
}

// newAPI is the ECS API endpoint, mounted on the metadata server by serve.
func (s *Server) newAPI() *fakeaws.Endpoint {
	return fakeaws.New(fakeaws.Service{
		Name:         "fakeecs",
		TargetPrefix: "AmazonEC2ContainerServiceV20141113.",
		SigningName:  "ecs",
		Region:       DefaultRegion,
		Secret: func(akid string) (string, bool) {
			return DefaultSecretAccessKey, akid == DefaultAccessKeyID
		},
		Ops:          map[string]fakeaws.Handler{"DescribeTasks": s.describeTasks},
		FaultMessage: s.faultMessage,
	})
}

// FailNext makes the next n API calls fail with code (ClientException,
// ServerException, AccessDeniedException, ThrottlingException…).
func (s *Server) FailNext(n int, code string) { s.api.FailNext(fakeaws.AnyOp, n, code) }

// DelayNext makes the next n API calls wait d before being answered
// (n <= 0: none); the wait ends, unanswered, when the client gives up.
func (s *Server) DelayNext(n int, d time.Duration) {
	if n < 0 {
		n = 0
	}
	s.api.DelayNext(fakeaws.AnyOp, n, d)
}

// APICalls counts the API requests for op (all outcomes).
func (s *Server) APICalls(op string) int { return s.api.Calls(op) }

// URL is the API endpoint, for AWS_ENDPOINT_URL_ECS.
func (s *Server) URL() string { return s.srv.URL }

// faultMessage is the text ECS sends with code, for injected faults.
func (s *Server) faultMessage(c *fakeaws.Call, code string) string {
	if code != "AccessDeniedException" {
		return ""
	}
	s.mu.Lock()
	_, clusterName := clusterOf(s.task)
	s.mu.Unlock()
	return fakeaws.AccessDenied(fakeaws.DefaultAccountID, "ecs:"+c.Op,
		fmt.Sprintf("arn:aws:ecs:%s:%s:task/%s/*", DefaultRegion, fakeaws.DefaultAccountID, clusterName))
}

type taskJSON struct {
	TaskARN       string  `json:"taskArn"`
	ClusterARN    string  `json:"clusterArn"`
	LastStatus    string  `json:"lastStatus"`
	DesiredStatus string  `json:"desiredStatus"`
	LaunchType    string  `json:"launchType"`
	Group         string  `json:"group"`
	StoppedAt     float64 `json:"stoppedAt,omitempty"`
	StoppedReason string  `json:"stoppedReason,omitempty"`
}

type failureJSON struct {
	ARN    string `json:"arn"`
	Reason string `json:"reason"`
}

// clusterOf returns the ARN and the name of task's cluster (the metadata
// may give either).
func clusterOf(task Task) (arn, name string) {
	arn = task.Cluster
	name = arn[strings.LastIndex(arn, "/")+1:]
	if !strings.HasPrefix(arn, "arn:") {
		arn = fmt.Sprintf("arn:aws:ecs:%s:%s:cluster/%s", DefaultRegion, fakeaws.DefaultAccountID, name)
	}
	return arn, name
}

func (s *Server) describeTasks(c *fakeaws.Call) (any, *fakeaws.Error) {
	var in struct {
		Cluster *string  `json:"cluster"`
		Tasks   []string `json:"tasks"`
		Include []string `json:"include"`
	}
	if err := c.Decode(&in); err != nil {
		return nil, err
	}
	switch {
	case len(in.Tasks) == 0:
		return nil, fakeaws.Errorf(http.StatusBadRequest, "InvalidParameterException", "Tasks cannot be empty.")
	case len(in.Tasks) > 100:
		return nil, fakeaws.Errorf(http.StatusBadRequest, "InvalidParameterException", "Tasks cannot have more than 100 elements")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	clusterARN, clusterName := clusterOf(s.task)
	asked := "default"
	if in.Cluster != nil {
		asked = *in.Cluster
	}
	if asked != clusterName && asked != clusterARN {
		return nil, fakeaws.Errorf(http.StatusBadRequest, "ClusterNotFoundException", "Cluster not found.")
	}
	statuses := map[string]string{s.task.TaskARN: StatusRunning}
	for arn, st := range s.statuses {
		statuses[arn] = st
	}
	tasks, failures := []taskJSON{}, []failureJSON{}
	for _, ref := range in.Tasks {
		arn := ref
		if !strings.HasPrefix(ref, "arn:") { // a task id
			arn = fmt.Sprintf("arn:aws:ecs:%s:%s:task/%s/%s", DefaultRegion, fakeaws.DefaultAccountID, clusterName, ref)
		}
		st, ok := statuses[arn]
		if !ok || !strings.Contains(arn, ":task/"+clusterName+"/") {
			failures = append(failures, failureJSON{ARN: arn, Reason: "MISSING"})
			continue
		}
		t := taskJSON{TaskARN: arn, ClusterARN: clusterARN, LastStatus: st, DesiredStatus: st, LaunchType: "FARGATE",
			Group: "family:" + s.task.Family}
		if st == StatusStopped {
			t.DesiredStatus = StatusStopped
			t.StoppedAt = fakeaws.Epoch(time.Now())
			t.StoppedReason = "Essential container in task exited"
		}
		if st != StatusStopped && st != StatusRunning {
			t.DesiredStatus = StatusRunning
		}
		tasks = append(tasks, t)
	}
	return map[string]any{"tasks": tasks, "failures": failures}, nil
}
