package fakeecs_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/ecs"
	"github.com/aws/aws-sdk-go-v2/service/ecs/types"

	"github.com/bastion-dev/bastion/internal/awsconf"
	"github.com/bastion-dev/bastion/test/fakeecs"
)

// client is the real SDK client, signing for service "ecs".
func client(s *fakeecs.Server, akid, secret, region string) *ecs.Client {
	return ecs.New(ecs.Options{
		Region:       region,
		BaseEndpoint: aws.String(s.URL()),
		Credentials:  credentials.NewStaticCredentialsProvider(akid, secret, ""),
		Retryer: retry.NewStandard(func(o *retry.StandardOptions) {
			o.MaxAttempts = 1
			o.RateLimiter = ratelimit.None
		}),
	})
}

var code = awsconf.ErrorCode

func TestDescribeTasks(t *testing.T) {
	s := fakeecs.NewTest(t, fakeecs.DefaultTask())
	c := client(s, fakeecs.DefaultAccessKeyID, fakeecs.DefaultSecretAccessKey, fakeecs.DefaultRegion)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	self := fakeecs.DefaultTask().TaskARN
	stopped := "arn:aws:ecs:us-east-1:123456789012:task/ops/11111111111111111111111111111111"
	gone := "arn:aws:ecs:us-east-1:123456789012:task/ops/22222222222222222222222222222222"
	s.SetTaskStatus(stopped, fakeecs.StatusStopped)

	out, err := c.DescribeTasks(ctx, &ecs.DescribeTasksInput{Cluster: aws.String("ops"), Tasks: []string{self, stopped, gone}})
	if err != nil {
		t.Fatal(err)
	}
	status := map[string]string{}
	for _, tk := range out.Tasks {
		status[aws.ToString(tk.TaskArn)] = aws.ToString(tk.LastStatus)
	}
	if status[self] != "RUNNING" || status[stopped] != "STOPPED" || len(out.Tasks) != 2 {
		t.Errorf("tasks %v", status)
	}
	if len(out.Failures) != 1 || aws.ToString(out.Failures[0].Arn) != gone || aws.ToString(out.Failures[0].Reason) != "MISSING" {
		t.Errorf("failures %+v", out.Failures)
	}
	if n := s.APICalls("DescribeTasks"); n != 1 {
		t.Errorf("APICalls = %d", n)
	}

	// A cluster ARN works too; another cluster does not exist.
	out, err = c.DescribeTasks(ctx, &ecs.DescribeTasksInput{Cluster: aws.String("arn:aws:ecs:us-east-1:123456789012:cluster/ops"), Tasks: []string{self}})
	if err != nil || len(out.Tasks) != 1 {
		t.Errorf("by cluster ARN: %v, %+v", err, out)
	}
	_, err = c.DescribeTasks(ctx, &ecs.DescribeTasksInput{Cluster: aws.String("dev"), Tasks: []string{self}})
	var nf *types.ClusterNotFoundException
	if !errors.As(err, &nf) {
		t.Errorf("other cluster: %v", err)
	}
	_, err = c.DescribeTasks(ctx, &ecs.DescribeTasksInput{Cluster: aws.String("ops"), Tasks: []string{}})
	if code(err) != "InvalidParameterException" {
		t.Errorf("no tasks: %v", err)
	}

	// Faults and delays.
	s.FailNext(1, "AccessDeniedException")
	_, err = c.DescribeTasks(ctx, &ecs.DescribeTasksInput{Cluster: aws.String("ops"), Tasks: []string{self}})
	if code(err) != "AccessDeniedException" ||
		!strings.Contains(err.Error(), "is not authorized to perform: ecs:DescribeTasks on resource: arn:aws:ecs:us-east-1:123456789012:task/ops/*") {
		t.Errorf("injected fault: %v", err)
	}
	s.FailNext(1, "ServerException")
	var se *types.ServerException
	if _, err := c.DescribeTasks(ctx, &ecs.DescribeTasksInput{Cluster: aws.String("ops"), Tasks: []string{self}}); !errors.As(err, &se) {
		t.Errorf("server exception: %v", err)
	}
	before := s.APICalls("DescribeTasks")
	s.DelayNext(1, time.Minute)
	short, scancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer scancel()
	if _, err := c.DescribeTasks(short, &ecs.DescribeTasksInput{Cluster: aws.String("ops"), Tasks: []string{self}}); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("delayed call: %v", err)
	}
	if _, err := c.DescribeTasks(ctx, &ecs.DescribeTasksInput{Cluster: aws.String("ops"), Tasks: []string{self}}); err != nil {
		t.Errorf("the call after the delayed one: %v", err)
	}
	if n := s.APICalls("DescribeTasks") - before; n != 2 {
		t.Errorf("APICalls = %d, want 2", n)
	}
	s.SetTaskStatus(stopped, "")
	out, err = c.DescribeTasks(ctx, &ecs.DescribeTasksInput{Cluster: aws.String("ops"), Tasks: []string{stopped}})
	if err != nil || len(out.Failures) != 1 {
		t.Errorf("forgotten task: %v %+v", err, out)
	}
}

// TestDescribeTasksSignature: the API checks SigV4 for service "ecs".
func TestDescribeTasksSignature(t *testing.T) {
	s := fakeecs.NewTest(t, fakeecs.DefaultTask())
	ctx := context.Background()
	in := &ecs.DescribeTasksInput{Cluster: aws.String("ops"), Tasks: []string{fakeecs.DefaultTask().TaskARN}}
	tests := []struct {
		name, akid, secret, region, want string
	}{
		{"unknown key", "AKIDOTHER", fakeecs.DefaultSecretAccessKey, "us-east-1", "UnrecognizedClientException"},
		{"wrong secret", fakeecs.DefaultAccessKeyID, "nope", "us-east-1", "InvalidSignatureException"},
		{"wrong region", fakeecs.DefaultAccessKeyID, fakeecs.DefaultSecretAccessKey, "eu-west-1", "InvalidSignatureException"},
	}
	for _, tt := range tests {
		_, err := client(s, tt.akid, tt.secret, tt.region).DescribeTasks(ctx, in)
		if code(err) != tt.want {
			t.Errorf("%s: %v, want %s", tt.name, err, tt.want)
		}
	}
	// Signed for another service: the scope names ssm.
	c := ecs.New(ecs.Options{Region: "us-east-1", BaseEndpoint: aws.String(s.URL()),
		Credentials: credentials.NewStaticCredentialsProvider(fakeecs.DefaultAccessKeyID, fakeecs.DefaultSecretAccessKey, "")},
		func(o *ecs.Options) { o.RetryMaxAttempts = 1 }, ecs.WithSigV4SigningName("ssm"))
	if _, err := c.DescribeTasks(ctx, in); code(err) != "InvalidSignatureException" {
		t.Errorf("signed for ssm: %v", err)
	}
	if got := s.APICalls("DescribeTasks"); got != 4 {
		t.Errorf("APICalls = %d", got)
	}
}
