package ssm

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// taskMeta is what bastion uses of the ECS task metadata v4 "/task" document.
type taskMeta struct {
	Cluster string // cluster name (after the last "/" of the ARN)
	TaskARN string
	TaskID  string // after the last "/" of TaskARN
	Family  string
}

// fetchTaskMeta reads <uri>/task, retrying briefly: the endpoint is local
// and a failure is most likely transient.
func fetchTaskMeta(ctx context.Context, client *http.Client, uri string) (*taskMeta, error) {
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		if attempt > 0 {
			if werr := sleepCtx(ctx, time.Duration(attempt)*500*time.Millisecond); werr != nil {
				break
			}
		}
		var m *taskMeta
		if m, err = fetchTaskMetaOnce(ctx, client, uri); err == nil {
			return m, nil
		}
	}
	return nil, fmt.Errorf("ssm: ECS task metadata: %w", err)
}

func fetchTaskMetaOnce(ctx context.Context, client *http.Client, uri string) (*taskMeta, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(uri, "/")+"/task", nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /task: %s", resp.Status)
	}
	var doc struct {
		Cluster string
		TaskARN string
		Family  string
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return nil, fmt.Errorf("GET /task: %w", err)
	}
	if doc.Cluster == "" || doc.TaskARN == "" || doc.Family == "" {
		return nil, fmt.Errorf("GET /task: Cluster, TaskARN or Family missing")
	}
	return &taskMeta{
		Cluster: afterLastSlash(doc.Cluster),
		TaskARN: doc.TaskARN,
		TaskID:  afterLastSlash(doc.TaskARN),
		Family:  doc.Family,
	}, nil
}

func afterLastSlash(s string) string {
	return s[strings.LastIndex(s, "/")+1:]
}

// sleepCtx waits d or until ctx is done, returning ctx.Err() then.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
