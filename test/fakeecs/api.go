package fakeecs

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/bastion-dev/bastion/test/fakesigv4"
)

// The ECS API side of the fake: DescribeTasks, spoken as the real service
// speaks it (AWS JSON 1.1, `POST /` with `X-Amz-Target:
// AmazonEC2ContainerServiceV20141113.DescribeTasks`, SigV4 service name
// "ecs", `{"__type","message"}` errors), reached by the real SDK through
// AWS_ENDPOINT_URL_ECS = URL(). The served task is RUNNING; other tasks are
// known once SetTaskStatus names them, and unknown ones come back as
// failures with reason MISSING, as ECS answers for tasks it has forgotten
// (it keeps stopped tasks for about an hour).

// Credentials and region the API accepts (the same defaults as test/fakessm,
// since one bastion signs for both).
const (
	DefaultAccessKeyID     = "AKIDFAKE"
	DefaultSecretAccessKey = "fakesecret"
	DefaultRegion          = "us-east-1"
)

const targetPrefix = "AmazonEC2ContainerServiceV20141113."

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

// FailNext makes the next n API calls fail with code (ClientException,
// ServerException, AccessDeniedException, ThrottlingException…).
func (s *Server) FailNext(n int, code string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := 0; i < n; i++ {
		s.faults = append(s.faults, code)
	}
}

// DelayNext makes the next n API calls wait d before being answered; the
// wait ends, unanswered, when the client gives up.
func (s *Server) DelayNext(n int, d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.apiDelay, s.apiDelays = d, n
}

// APICalls counts the API requests for op (all outcomes).
func (s *Server) APICalls(op string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.apiCalls[op]
}

// URL is the API endpoint, for AWS_ENDPOINT_URL_ECS.
func (s *Server) URL() string { return s.srv.URL }

type apiError struct {
	status        int
	code, message string
}

func writeAPIError(w http.ResponseWriter, e apiError) {
	body, _ := json.Marshal(map[string]string{"__type": e.code, "message": e.message})
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	w.Header().Set("X-Amzn-Errortype", e.code+":")
	w.WriteHeader(e.status)
	_, _ = w.Write(body)
}

func (s *Server) serveAPI(w http.ResponseWriter, r *http.Request) {
	op, ok := strings.CutPrefix(r.Header.Get("X-Amz-Target"), targetPrefix)
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil || !ok || op != "DescribeTasks" {
		writeAPIError(w, apiError{http.StatusBadRequest, "UnknownOperationException", ""})
		return
	}
	s.mu.Lock()
	s.apiCalls[op]++
	var fault string
	if len(s.faults) > 0 {
		fault, s.faults = s.faults[0], s.faults[1:]
	}
	delay := time.Duration(0)
	if s.apiDelays > 0 {
		delay = s.apiDelay
		s.apiDelays--
	}
	s.mu.Unlock()

	v := fakesigv4.Verifier{Service: "ecs", Region: DefaultRegion, Secret: func(akid string) (string, bool) {
		return DefaultSecretAccessKey, akid == DefaultAccessKeyID
	}}
	if _, aerr := v.Verify(r, body); aerr != nil {
		writeAPIError(w, apiError{aerr.Status, aerr.Code, aerr.Message})
		return
	}
	if delay > 0 {
		select {
		case <-time.After(delay):
		case <-r.Context().Done():
			return
		}
	}
	if fault != "" {
		status := http.StatusBadRequest
		if fault == "ServerException" {
			status = http.StatusInternalServerError
		}
		writeAPIError(w, apiError{status, fault, "injected fault"})
		return
	}
	out, aerr := s.describeTasks(body)
	if aerr != nil {
		writeAPIError(w, *aerr)
		return
	}
	raw, _ := json.Marshal(out)
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	_, _ = w.Write(raw)
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

func (s *Server) describeTasks(body []byte) (any, *apiError) {
	var in struct {
		Cluster *string  `json:"cluster"`
		Tasks   []string `json:"tasks"`
		Include []string `json:"include"`
	}
	if err := json.Unmarshal(body, &in); err != nil {
		return nil, &apiError{http.StatusBadRequest, "SerializationException", err.Error()}
	}
	switch {
	case len(in.Tasks) == 0:
		return nil, &apiError{http.StatusBadRequest, "InvalidParameterException", "Tasks cannot be empty."}
	case len(in.Tasks) > 100:
		return nil, &apiError{http.StatusBadRequest, "InvalidParameterException", "Tasks cannot have more than 100 elements"}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	clusterARN := s.task.Cluster
	clusterName := clusterARN[strings.LastIndex(clusterARN, "/")+1:]
	if !strings.HasPrefix(clusterARN, "arn:") {
		clusterARN = fmt.Sprintf("arn:aws:ecs:%s:123456789012:cluster/%s", DefaultRegion, clusterName)
	}
	asked := "default"
	if in.Cluster != nil {
		asked = *in.Cluster
	}
	if asked != clusterName && asked != clusterARN {
		return nil, &apiError{http.StatusBadRequest, "ClusterNotFoundException", "Cluster not found."}
	}
	statuses := map[string]string{s.task.TaskARN: StatusRunning}
	for arn, st := range s.statuses {
		statuses[arn] = st
	}
	tasks, failures := []taskJSON{}, []failureJSON{}
	for _, ref := range in.Tasks {
		arn := ref
		if !strings.HasPrefix(ref, "arn:") { // a task id
			arn = fmt.Sprintf("arn:aws:ecs:%s:123456789012:task/%s/%s", DefaultRegion, clusterName, ref)
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
			t.StoppedAt = float64(time.Now().Unix())
			t.StoppedReason = "Essential container in task exited"
		}
		if st != StatusStopped && st != StatusRunning {
			t.DesiredStatus = StatusRunning
		}
		tasks = append(tasks, t)
	}
	return map[string]any{"tasks": tasks, "failures": failures}, nil
}
