package fakessm_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ssm"
	"github.com/aws/aws-sdk-go-v2/service/ssm/types"

	"github.com/bastion-dev/bastion/internal/awsconf"
	"github.com/bastion-dev/bastion/test/fakeaws/awstest"
	"github.com/bastion-dev/bastion/test/fakessm"
)

// newClient builds the real SDK client the way the product does: default
// config chain, endpoint only through AWS_ENDPOINT_URL_SSM.
func newClient(t *testing.T, srv *fakessm.Server, region, akid, secret string) *ssm.Client {
	return ssm.NewFromConfig(awstest.Config(t, "AWS_ENDPOINT_URL_SSM", srv.URL(), region, akid, secret))
}

func defaultClient(t *testing.T, srv *fakessm.Server) *ssm.Client {
	return newClient(t, srv, "us-east-1", fakessm.DefaultAccessKeyID, fakessm.DefaultSecretAccessKey)
}

// rawCall performs what the agent does: a JSON 1.1 call, signed with
// (akid, secret) unless akid is empty.
func rawCall(t *testing.T, url, op string, in any, akid, secret, region string) (int, map[string]any) {
	t.Helper()
	body, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	r := awstest.Post(t, url, "AmazonSSM."+op, body, awstest.Signing{Service: "ssm", Region: region, AccessKeyID: akid, SecretAccessKey: secret})
	return r.Status, r.Body
}

func register(t *testing.T, srv *fakessm.Server, id, code string) string {
	t.Helper()
	status, out := rawCall(t, srv.URL(), "RegisterManagedInstance", map[string]string{
		"ActivationCode": code, "ActivationId": id, "PublicKey": "MIIB", "PublicKeyType": "Rsa", "Fingerprint": "fp",
	}, "", "", "")
	if status != 200 {
		t.Fatalf("register: %d %v", status, out)
	}
	return out["InstanceId"].(string)
}

func ping(t *testing.T, srv *fakessm.Server, id string) {
	t.Helper()
	status, out := rawCall(t, srv.URL(), "UpdateInstanceInformation", map[string]string{
		"InstanceId": id, "AgentName": "amazon-ssm-agent", "AgentVersion": "3.3.987.0", "AgentStatus": "Active",
		"PlatformType": "Linux", "ComputerName": "bastion",
	}, id, fakessm.AgentSecret(id), srv.Region())
	if status != 200 {
		t.Fatalf("ping: %d %v", status, out)
	}
}

var apiCode = awsconf.ErrorCode

func TestLifecycleWithRealSDK(t *testing.T) {
	srv := fakessm.NewTest(t, fakessm.Options{})
	c := defaultClient(t, srv)
	ctx := context.Background()

	gs, err := c.GetServiceSetting(ctx, &ssm.GetServiceSettingInput{SettingId: aws.String(fakessm.ActivationTierSetting)})
	if err != nil {
		t.Fatalf("GetServiceSetting: %v", err)
	}
	if v := aws.ToString(gs.ServiceSetting.SettingValue); v != "advanced" {
		t.Errorf("tier = %q, want advanced", v)
	}
	srv.SetServiceSetting(fakessm.ActivationTierSetting, "standard")
	gs, err = c.GetServiceSetting(ctx, &ssm.GetServiceSettingInput{
		SettingId: aws.String("arn:aws:ssm:us-east-1:123456789012:servicesetting/ssm/managed-instance/activation-tier")})
	if err != nil || aws.ToString(gs.ServiceSetting.SettingValue) != "standard" || gs.ServiceSetting.LastModifiedDate == nil {
		t.Fatalf("GetServiceSetting by ARN: %+v %v", gs, err)
	}
	_, err = c.GetServiceSetting(ctx, &ssm.GetServiceSettingInput{SettingId: aws.String("/ssm/nope")})
	var nf *types.ServiceSettingNotFound
	if !errors.As(err, &nf) {
		t.Errorf("unknown setting: %v", err)
	}

	ca, err := c.CreateActivation(ctx, &ssm.CreateActivationInput{
		IamRole:             aws.String("bastion-ssm"),
		DefaultInstanceName: aws.String("bastion-ops"),
		RegistrationLimit:   aws.Int32(1),
		ExpirationDate:      aws.Time(time.Now().Add(time.Hour)),
		Tags:                []types.Tag{{Key: aws.String("team"), Value: aws.String("ops")}},
	})
	if err != nil {
		t.Fatalf("CreateActivation: %v", err)
	}
	if len(srv.Activations()) != 1 || srv.Calls("CreateActivation") != 1 {
		t.Fatalf("activations: %+v", srv.Activations())
	}
	id := register(t, srv, *ca.ActivationId, *ca.ActivationCode)

	if _, err := c.DeleteActivation(ctx, &ssm.DeleteActivationInput{ActivationId: ca.ActivationId}); err != nil {
		t.Fatalf("DeleteActivation: %v", err)
	}
	_, err = c.DeleteActivation(ctx, &ssm.DeleteActivationInput{ActivationId: ca.ActivationId})
	var bad *types.InvalidActivationId
	if !errors.As(err, &bad) {
		t.Errorf("second DeleteActivation: %v", err)
	}
	if len(srv.Activations()) != 0 {
		t.Errorf("deleted activation still listed")
	}

	describe := func() []types.InstanceInformation {
		out, err := c.DescribeInstanceInformation(ctx, &ssm.DescribeInstanceInformationInput{
			Filters: []types.InstanceInformationStringFilter{{Key: aws.String("InstanceIds"), Values: []string{id}}}})
		if err != nil {
			t.Fatalf("DescribeInstanceInformation: %v", err)
		}
		return out.InstanceInformationList
	}
	if l := describe(); len(l) != 1 || l[0].PingStatus != types.PingStatusConnectionLost {
		t.Fatalf("before ping: %+v", l)
	}
	ping(t, srv, id)
	l := describe()
	if len(l) != 1 || l[0].PingStatus != types.PingStatusOnline || aws.ToString(l[0].Name) != "bastion-ops" ||
		aws.ToString(l[0].ActivationId) != *ca.ActivationId || aws.ToString(l[0].AgentVersion) != "3.3.987.0" ||
		l[0].LastPingDateTime == nil || l[0].ResourceType != types.ResourceTypeManagedInstance {
		t.Fatalf("after ping: %+v", l)
	}

	if _, err := c.AddTagsToResource(ctx, &ssm.AddTagsToResourceInput{ResourceType: types.ResourceTypeForTaggingManagedInstance,
		ResourceId: aws.String(id), Tags: []types.Tag{{Key: aws.String("owner"), Value: aws.String("me")}}}); err != nil {
		t.Fatalf("AddTagsToResource: %v", err)
	}
	lt, err := c.ListTagsForResource(ctx, &ssm.ListTagsForResourceInput{ResourceType: types.ResourceTypeForTaggingManagedInstance, ResourceId: aws.String(id)})
	if err != nil || len(lt.TagList) != 2 || *lt.TagList[0].Key != "owner" || *lt.TagList[1].Key != "team" {
		t.Fatalf("ListTagsForResource: %+v %v", lt, err)
	}
	_, err = c.ListTagsForResource(ctx, &ssm.ListTagsForResourceInput{ResourceType: types.ResourceTypeForTaggingManagedInstance, ResourceId: aws.String("mi-00000000000000000")})
	var badRes *types.InvalidResourceId
	if !errors.As(err, &badRes) {
		t.Errorf("tags of unknown instance: %v", err)
	}

	if _, err := c.DeregisterManagedInstance(ctx, &ssm.DeregisterManagedInstanceInput{InstanceId: aws.String(id)}); err != nil {
		t.Fatalf("DeregisterManagedInstance: %v", err)
	}
	if len(describe()) != 0 || len(srv.Instances()) != 0 {
		t.Fatalf("instance still listed after deregistration")
	}
	_, err = c.DeregisterManagedInstance(ctx, &ssm.DeregisterManagedInstanceInput{InstanceId: aws.String(id)})
	var inv *types.InvalidInstanceId
	if !errors.As(err, &inv) || apiCode(err) != "InvalidInstanceId" || inv.ErrorMessage() == "" {
		t.Fatalf("second deregistration: %v", err)
	}
	_, err = c.DeregisterManagedInstance(ctx, &ssm.DeregisterManagedInstanceInput{InstanceId: aws.String("i-0123456789abcdef0")})
	if apiCode(err) != "ValidationException" {
		t.Errorf("EC2 id deregistration: %v", err)
	}
	// The log shows who called what.
	var agentCalls int
	for _, r := range srv.Requests() {
		if r.AccessKeyID == id {
			agentCalls++
		}
	}
	if agentCalls != 1 {
		t.Errorf("agent calls = %d, want 1: %+v", agentCalls, srv.Requests())
	}
}

func TestCreateActivationValidation(t *testing.T) {
	srv := fakessm.NewTest(t, fakessm.Options{})
	c := defaultClient(t, srv)
	tests := []struct {
		name string
		in   ssm.CreateActivationInput
		code string
	}{
		{"ok defaults", ssm.CreateActivationInput{IamRole: aws.String("r")}, ""},
		{"role too long", ssm.CreateActivationInput{IamRole: aws.String(strings.Repeat("r", 65))}, "ValidationException"},
		{"bad name", ssm.CreateActivationInput{IamRole: aws.String("r"), DefaultInstanceName: aws.String("a;b")}, "ValidationException"},
		{"name too long", ssm.CreateActivationInput{IamRole: aws.String("r"), DefaultInstanceName: aws.String(strings.Repeat("n", 257))}, "ValidationException"},
		{"limit 0", ssm.CreateActivationInput{IamRole: aws.String("r"), RegistrationLimit: aws.Int32(0)}, "ValidationException"},
		{"limit 1001", ssm.CreateActivationInput{IamRole: aws.String("r"), RegistrationLimit: aws.Int32(1001)}, "ValidationException"},
		{"expires in 31 days", ssm.CreateActivationInput{IamRole: aws.String("r"), ExpirationDate: aws.Time(time.Now().Add(31 * 24 * time.Hour))}, "InvalidParameters"},
		{"expired", ssm.CreateActivationInput{IamRole: aws.String("r"), ExpirationDate: aws.Time(time.Now().Add(-time.Minute))}, "InvalidParameters"},
		{"bad tag", ssm.CreateActivationInput{IamRole: aws.String("r"), Tags: []types.Tag{{Key: aws.String("k!"), Value: aws.String("v")}}}, "ValidationException"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := c.CreateActivation(context.Background(), &tt.in)
			if got := apiCode(err); got != tt.code {
				t.Fatalf("code = %q (%v), want %q", got, err, tt.code)
			}
			if err == nil && (len(*out.ActivationId) != 36 || len(*out.ActivationCode) != 20) {
				t.Fatalf("bad ids: %+v", out)
			}
		})
	}
	acts := srv.Activations()
	if len(acts) != 1 || acts[0].RegistrationLimit != 1 || acts[0].ExpirationDate.Sub(acts[0].CreatedDate) != 24*time.Hour {
		t.Fatalf("defaults not applied: %+v", acts)
	}
}

func TestRegisterManagedInstanceErrors(t *testing.T) {
	var mu sync.Mutex
	now := time.Now()
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	srv := fakessm.NewTest(t, fakessm.Options{Clock: clock})
	c := defaultClient(t, srv)
	ctx := context.Background()
	mk := func(limit int32) *ssm.CreateActivationOutput {
		out, err := c.CreateActivation(ctx, &ssm.CreateActivationInput{IamRole: aws.String("r"), RegistrationLimit: aws.Int32(limit)})
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	limited := mk(1)
	register(t, srv, *limited.ActivationId, *limited.ActivationCode)
	deleted := mk(1)
	if _, err := c.DeleteActivation(ctx, &ssm.DeleteActivationInput{ActivationId: deleted.ActivationId}); err != nil {
		t.Fatal(err)
	}
	fine := mk(5)

	tests := []struct {
		name, id, code, want string
		advance              time.Duration
	}{
		{"wrong code", *fine.ActivationId, "nope", "InvalidActivation", 0},
		{"unknown id", "00000000-0000-4000-8000-000000000000", "x", "InvalidActivation", 0},
		{"deleted", *deleted.ActivationId, *deleted.ActivationCode, "InvalidActivation", 0},
		{"limit", *limited.ActivationId, *limited.ActivationCode, "RegistrationLimitExceeded", 0},
		{"expired", *fine.ActivationId, *fine.ActivationCode, "ActivationExpired", 25 * time.Hour},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mu.Lock()
			now = now.Add(tt.advance)
			mu.Unlock()
			status, out := rawCall(t, srv.URL(), "RegisterManagedInstance", map[string]string{
				"ActivationCode": tt.code, "ActivationId": tt.id, "PublicKey": "k", "PublicKeyType": "Rsa", "Fingerprint": "f"}, "", "", "")
			if status != 400 || out["__type"] != tt.want || out["Message"] == "" {
				t.Fatalf("got %d %v, want 400 %s", status, out, tt.want)
			}
		})
	}
	// Tags and the default name travel from the activation to the instance.
	tagged, err := c.CreateActivation(ctx, &ssm.CreateActivationInput{IamRole: aws.String("r"), DefaultInstanceName: aws.String("bastion"),
		Tags: []types.Tag{{Key: aws.String("env"), Value: aws.String("prod")}}})
	if err != nil {
		t.Fatal(err)
	}
	id := register(t, srv, *tagged.ActivationId, *tagged.ActivationCode)
	inst, ok := srv.Instance(id)
	if !ok || inst.Name != "bastion" || len(inst.Tags) != 1 || inst.Tags[0] != (fakessm.Tag{Key: "env", Value: "prod"}) || inst.IamRole != "r" {
		t.Fatalf("instance = %+v", inst)
	}
}

func TestDescribeFiltersAndPagination(t *testing.T) {
	srv := fakessm.NewTest(t, fakessm.Options{})
	c := defaultClient(t, srv)
	ctx := context.Background()
	for i := 0; i < 23; i++ {
		in := fakessm.Instance{Tags: []fakessm.Tag{{Key: "n", Value: fmt.Sprint(i % 2)}}}
		if i < 3 {
			in.LastPing = time.Now()
		}
		srv.AddInstance(in)
	}
	count := func(in *ssm.DescribeInstanceInformationInput) (n, pages int, err error) {
		p := ssm.NewDescribeInstanceInformationPaginator(c, in)
		for p.HasMorePages() {
			out, err := p.NextPage(ctx)
			if err != nil {
				return n, pages, err
			}
			n += len(out.InstanceInformationList)
			pages++
		}
		return n, pages, nil
	}
	f := func(k string, v ...string) types.InstanceInformationStringFilter {
		return types.InstanceInformationStringFilter{Key: aws.String(k), Values: v}
	}
	tests := []struct {
		name      string
		in        ssm.DescribeInstanceInformationInput
		n, pages  int
		errorCode string
	}{
		{"default page size", ssm.DescribeInstanceInformationInput{}, 23, 3, ""},
		{"max 5", ssm.DescribeInstanceInformationInput{MaxResults: aws.Int32(5)}, 23, 5, ""},
		{"online", ssm.DescribeInstanceInformationInput{Filters: []types.InstanceInformationStringFilter{f("PingStatus", "Online")}}, 3, 1, ""},
		{"lost", ssm.DescribeInstanceInformationInput{Filters: []types.InstanceInformationStringFilter{f("PingStatus", "ConnectionLost")}}, 20, 2, ""},
		{"tag value", ssm.DescribeInstanceInformationInput{Filters: []types.InstanceInformationStringFilter{f("tag:n", "1")}}, 11, 2, ""},
		{"tag-key", ssm.DescribeInstanceInformationInput{Filters: []types.InstanceInformationStringFilter{f("tag-key", "n")}}, 23, 3, ""},
		{"resource type", ssm.DescribeInstanceInformationInput{Filters: []types.InstanceInformationStringFilter{f("ResourceType", "ManagedInstance")}}, 23, 3, ""},
		{"legacy", ssm.DescribeInstanceInformationInput{InstanceInformationFilterList: []types.InstanceInformationFilter{
			{Key: types.InstanceInformationFilterKeyPingStatus, ValueSet: []string{"Online"}}}}, 3, 1, ""},
		{"both kinds", ssm.DescribeInstanceInformationInput{Filters: []types.InstanceInformationStringFilter{f("PingStatus", "Online")},
			InstanceInformationFilterList: []types.InstanceInformationFilter{{Key: types.InstanceInformationFilterKeyPingStatus, ValueSet: []string{"Online"}}}},
			0, 0, "InvalidInstanceInformationFilterValue"},
		{"tag mixed", ssm.DescribeInstanceInformationInput{Filters: []types.InstanceInformationStringFilter{f("tag:n", "1"), f("PingStatus", "Online")}}, 0, 0, "InvalidInstanceInformationFilterValue"},
		{"bad key", ssm.DescribeInstanceInformationInput{Filters: []types.InstanceInformationStringFilter{f("Color", "red")}}, 0, 0, "InvalidFilterKey"},
		{"bad ping value", ssm.DescribeInstanceInformationInput{Filters: []types.InstanceInformationStringFilter{f("PingStatus", "Up")}}, 0, 0, "InvalidInstanceInformationFilterValue"},
		{"max too big", ssm.DescribeInstanceInformationInput{MaxResults: aws.Int32(51)}, 0, 0, "ValidationException"},
		{"bad token", ssm.DescribeInstanceInformationInput{NextToken: aws.String("garbage!")}, 0, 0, "InvalidNextToken"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n, pages, err := count(&tt.in)
			if got := apiCode(err); got != tt.errorCode {
				t.Fatalf("error %v, want code %q", err, tt.errorCode)
			}
			if err == nil && (n != tt.n || pages != tt.pages) {
				t.Fatalf("got %d instances in %d pages, want %d in %d", n, pages, tt.n, tt.pages)
			}
		})
	}
}

// TestAuthentication: the fake signs as SSM in its region (the checks
// themselves are test/fakeaws's), knows the configured credentials and
// every managed instance's agent key.
func TestAuthentication(t *testing.T) {
	srv := fakessm.NewTest(t, fakessm.Options{Region: "eu-west-1", Credentials: map[string]string{"AKIDOTHER": "other"}})
	body := map[string]string{"SettingId": fakessm.ActivationTierSetting}
	const agent = "mi-0123456789abcdef0"
	tests := []struct {
		name         string
		sign         awstest.Signing
		code         string // "" for success
		messageIsSet bool
	}{
		{"configured key", awstest.Signing{Service: "ssm", Region: "eu-west-1", AccessKeyID: "AKIDOTHER", SecretAccessKey: "other"}, "", false},
		{"default key not configured", awstest.Signing{Service: "ssm", Region: "eu-west-1", AccessKeyID: "AKIDFAKE", SecretAccessKey: "fakesecret"}, "UnrecognizedClientException", true},
		{"default region", awstest.Signing{Service: "ssm", Region: "us-east-1", AccessKeyID: "AKIDOTHER", SecretAccessKey: "other"}, "InvalidSignatureException", true},
		{"scoped to ec2", awstest.Signing{Service: "ec2", Region: "eu-west-1", AccessKeyID: "AKIDOTHER", SecretAccessKey: "other"}, "InvalidSignatureException", true},
		{"agent key", awstest.Signing{Service: "ssm", Region: "eu-west-1", AccessKeyID: agent, SecretAccessKey: fakessm.AgentSecret(agent)}, "", false},
		{"agent key wrong secret", awstest.Signing{Service: "ssm", Region: "eu-west-1", AccessKeyID: agent, SecretAccessKey: "nope"}, "InvalidSignatureException", true},
		{"unsigned", awstest.Signing{}, "MissingAuthenticationTokenException", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			raw, _ := json.Marshal(body)
			r := awstest.Post(t, srv.URL(), "AmazonSSM.GetServiceSetting", raw, tt.sign)
			if tt.code == "" && r.Status != 200 || tt.code != "" && (r.Status != 400 || r.Body["__type"] != tt.code || r.Body["message"] == nil) {
				t.Fatalf("got %d %v, want %q", r.Status, r.Body, tt.code)
			}
		})
	}
	if srv.Region() != "eu-west-1" {
		t.Fatalf("Region() = %s", srv.Region())
	}
}

// TestFaultInjection: injected faults answer with SSM's codes, statuses and
// messages, which the SDK reads as SSM's typed errors (the injection itself
// is test/fakeaws's).
func TestFaultInjection(t *testing.T) {
	srv := fakessm.NewTest(t, fakessm.Options{})
	c := defaultClient(t, srv)
	ctx := context.Background()
	create := func(ctx context.Context) error {
		_, err := c.CreateActivation(ctx, &ssm.CreateActivationInput{IamRole: aws.String("r")})
		return err
	}

	t.Run("internal error: typed, 500, retried", func(t *testing.T) {
		before := srv.Calls("CreateActivation")
		srv.FailNext("CreateActivation", 5, "InternalServerError")
		err := create(ctx)
		var ise *types.InternalServerError
		if !errors.As(err, &ise) || aws.ToString(ise.Message) != "An internal error occurred." {
			t.Fatalf("err = %v", err)
		}
		if n := srv.Calls("CreateActivation") - before; n != 3 {
			t.Fatalf("calls = %d, want 3 (SDK default attempts)", n)
		}
		srv.ClearFaults()
	})
	t.Run("access denied names the action and the resource", func(t *testing.T) {
		srv.FailNext("CreateActivation", 1, "AccessDeniedException")
		err := create(ctx)
		if apiCode(err) != "AccessDeniedException" || !strings.Contains(err.Error(),
			"is not authorized to perform: ssm:CreateActivation on resource: arn:aws:ssm:us-east-1:123456789012:activation/*") {
			t.Fatalf("err = %v", err)
		}
		srv.FailNext(fakessm.AnyOp, 1, "AccessDeniedException")
		_, err = c.DescribeSessions(ctx, &ssm.DescribeSessionsInput{State: types.SessionStateActive})
		if !strings.Contains(err.Error(), "ssm:DescribeSessions on resource: arn:aws:ssm:us-east-1:123456789012:*") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("modeled errors carry Message", func(t *testing.T) {
		srv.FailNext(fakessm.AnyOp, 1, "InvalidInstanceId")
		_, err := c.DescribeInstanceInformation(ctx, &ssm.DescribeInstanceInformationInput{})
		var inv *types.InvalidInstanceId
		if !errors.As(err, &inv) || aws.ToString(inv.Message) != "Instance Id is not valid." {
			t.Fatalf("err = %v", err)
		}
		srv.FailNext("GetServiceSetting", 1, "TooManyUpdates")
		status, out := rawCall(t, srv.URL(), "GetServiceSetting", map[string]string{"SettingId": fakessm.ActivationTierSetting}, "AKIDFAKE", "fakesecret", "us-east-1")
		if status != 400 || out["Message"] != "There are concurrent updates for a resource that supports one update at a time." {
			t.Fatalf("%d %v", status, out)
		}
	})
	t.Run("lost response: a second activation", func(t *testing.T) {
		before := len(srv.Activations())
		srv.Inject("CreateActivation", fakessm.Fault{Count: 1, Code: "InternalServerError", After: true})
		if err := create(ctx); err != nil {
			t.Fatalf("SDK did not retry: %v", err)
		}
		if n := len(srv.Activations()) - before; n != 2 {
			t.Fatalf("%d activations created, want the retry's and the lost attempt's", n)
		}
	})
}

func TestPingStatusAndSeeding(t *testing.T) {
	var mu sync.Mutex
	now := time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	srv := fakessm.NewTest(t, fakessm.Options{Clock: clock, OnlineWindow: 5 * time.Minute})
	orphan := srv.AddInstance(fakessm.Instance{Name: "bastion", LastPing: now.Add(-20 * time.Minute)})
	if orphan.PingStatus != fakessm.PingConnectionLost {
		t.Fatalf("orphan = %+v", orphan)
	}
	ping(t, srv, orphan.InstanceID)
	if in, _ := srv.Instance(orphan.InstanceID); in.PingStatus != fakessm.PingOnline || in.Pings != 1 {
		t.Fatalf("after ping = %+v", in)
	}
	mu.Lock()
	now = now.Add(6 * time.Minute)
	mu.Unlock()
	if in, _ := srv.Instance(orphan.InstanceID); in.PingStatus != fakessm.PingConnectionLost {
		t.Fatalf("after window = %+v", in)
	}
	if err := srv.SetPingStatus(orphan.InstanceID, fakessm.PingInactive); err != nil {
		t.Fatal(err)
	}
	if in, _ := srv.Instance(orphan.InstanceID); in.PingStatus != fakessm.PingInactive {
		t.Fatalf("forced = %+v", in)
	}
	if err := srv.SetPing(orphan.InstanceID, now); err != nil {
		t.Fatal(err)
	}
	if in, _ := srv.Instance(orphan.InstanceID); in.PingStatus != fakessm.PingOnline {
		t.Fatalf("SetPing now = %+v", in)
	}
	// A ping signed with another instance's key is refused.
	other := srv.AddInstance(fakessm.Instance{})
	status, out := rawCall(t, srv.URL(), "UpdateInstanceInformation", map[string]string{"InstanceId": orphan.InstanceID},
		other.InstanceID, fakessm.AgentSecret(other.InstanceID), "us-east-1")
	if status != 400 || out["__type"] != "AccessDeniedException" {
		t.Fatalf("cross-instance ping: %d %v", status, out)
	}
	if err := srv.SetPing("mi-00000000000000000", now); err == nil {
		t.Fatal("SetPing on unknown instance succeeded")
	}
}

func TestControlAPI(t *testing.T) {
	srv := fakessm.NewTest(t, fakessm.Options{})
	c := defaultClient(t, srv)
	ctx := context.Background()
	post := func(path string, v any) {
		t.Helper()
		b, _ := json.Marshal(v)
		resp, err := http.Post(srv.URL()+path, "application/json", bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("%s: %d", path, resp.StatusCode)
		}
	}
	post("/_fake/setting", fakessm.SettingRequest{Value: "standard"})
	gs, err := c.GetServiceSetting(ctx, &ssm.GetServiceSettingInput{SettingId: aws.String(fakessm.ActivationTierSetting)})
	if err != nil || *gs.ServiceSetting.SettingValue != "standard" || *gs.ServiceSetting.Status != "Default" {
		t.Fatalf("setting: %+v %v", gs, err)
	}
	// The shared endpoints are mounted beside SSM's (test/fakeaws tests them).
	post("/_fake/fail", fakessm.FailRequest{Op: "DeleteActivation", Fault: fakessm.Fault{Count: 1, Code: "TooManyUpdates"}})
	_, err = c.DeleteActivation(ctx, &ssm.DeleteActivationInput{ActivationId: aws.String("x")})
	if apiCode(err) != "TooManyUpdates" {
		t.Fatalf("injected fault: %v", err)
	}
	if _, err := c.GetServiceSetting(ctx, &ssm.GetServiceSettingInput{SettingId: aws.String(fakessm.ActivationTierSetting)}); err != nil {
		t.Fatal(err)
	}
	post("/_fake/instance", fakessm.Instance{InstanceID: "mi-0123456789abcdef0", Name: "orphan"})
	post("/_fake/ping", fakessm.PingRequest{InstanceID: "mi-0123456789abcdef0", Ago: "20m"})

	resp, err := http.Get(srv.URL() + "/_fake/state")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st fakessm.State
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	if len(st.Instances) != 1 || st.Instances[0].PingStatus != "ConnectionLost" || st.Instances[0].LastPing.IsZero() ||
		st.Calls["GetServiceSetting"] != 2 || st.FaultsServed["DeleteActivation"] != 1 || st.Settings[fakessm.ActivationTierSetting] != "standard" ||
		len(st.Requests) != 3 || st.Requests[1].Fault != "TooManyUpdates" {
		t.Fatalf("state = %+v", st)
	}
}

// TestOps: the operations the model serves; others are unknown.
func TestOps(t *testing.T) {
	srv := fakessm.NewTest(t, fakessm.Options{})
	want := []string{"AddTagsToResource", "CreateActivation", "DeleteActivation", "DeregisterManagedInstance", "DescribeActivations",
		"DescribeInstanceInformation", "DescribeSessions", "GetServiceSetting", "ListTagsForResource", "RegisterManagedInstance", "UpdateInstanceInformation"}
	if got := fakessm.Ops(); !slices.Equal(got, want) {
		t.Fatalf("Ops() = %v", got)
	}
	status, out := rawCall(t, srv.URL(), "SendCommand", map[string]string{}, "AKIDFAKE", "fakesecret", "us-east-1")
	if status != 400 || out["__type"] != "UnknownOperationException" {
		t.Fatalf("got %d %v", status, out)
	}
}

func TestDescribeActivations(t *testing.T) {
	now := time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)
	srv := fakessm.NewTest(t, fakessm.Options{Clock: func() time.Time { return now }})
	c := defaultClient(t, srv)
	ctx := context.Background()

	created, err := c.CreateActivation(ctx, &ssm.CreateActivationInput{
		IamRole: aws.String("bastion-agent"), DefaultInstanceName: aws.String("b1"), Description: aws.String("bastion b1 run 1"),
		Tags: []types.Tag{{Key: aws.String("bastion:ecs-task-arn"), Value: aws.String("arn:aws:ecs:us-east-1:123456789012:task/ops/1")}},
	})
	if err != nil {
		t.Fatal(err)
	}
	id := aws.ToString(created.ActivationId)
	for i := 0; i < 12; i++ {
		srv.AddActivation(fakessm.Activation{IamRole: "other", DefaultInstanceName: fmt.Sprintf("n%d", i%3),
			CreatedDate: now.Add(-time.Duration(i) * time.Minute)})
	}
	expired := srv.AddActivation(fakessm.Activation{IamRole: "other", DefaultInstanceName: "old",
		CreatedDate: now.Add(-48 * time.Hour), ExpirationDate: now.Add(-time.Hour), RegistrationsCount: 1})
	gone := srv.AddActivation(fakessm.Activation{IamRole: "bastion-agent", DefaultInstanceName: "b1"})
	if _, err := c.DeleteActivation(ctx, &ssm.DeleteActivationInput{ActivationId: aws.String(gone.ActivationID)}); err != nil {
		t.Fatal(err)
	}

	list := func(in *ssm.DescribeActivationsInput) (acts []types.Activation, pages int, err error) {
		p := ssm.NewDescribeActivationsPaginator(c, in)
		for p.HasMorePages() {
			out, err := p.NextPage(ctx)
			if err != nil {
				return acts, pages, err
			}
			acts = append(acts, out.ActivationList...)
			pages++
		}
		return acts, pages, nil
	}
	f := func(k types.DescribeActivationsFilterKeys, v ...string) []types.DescribeActivationsFilter {
		return []types.DescribeActivationsFilter{{FilterKey: k, FilterValues: v}}
	}

	t.Run("shapes", func(t *testing.T) {
		acts, _, err := list(&ssm.DescribeActivationsInput{Filters: f(types.DescribeActivationsFilterKeysDefaultInstanceName, "b1")})
		if err != nil || len(acts) != 1 {
			t.Fatalf("got %+v, %v; want only the live b1 activation", acts, err)
		}
		a := acts[0]
		if aws.ToString(a.ActivationId) != id || aws.ToString(a.Description) != "bastion b1 run 1" || aws.ToString(a.IamRole) != "bastion-agent" ||
			aws.ToString(a.DefaultInstanceName) != "b1" || aws.ToInt32(a.RegistrationLimit) != 1 || aws.ToInt32(a.RegistrationsCount) != 0 ||
			a.Expired || !aws.ToTime(a.CreatedDate).Equal(now) || !aws.ToTime(a.ExpirationDate).Equal(now.Add(24*time.Hour)) ||
			len(a.Tags) != 1 || aws.ToString(a.Tags[0].Key) != "bastion:ecs-task-arn" || aws.ToString(a.Tags[0].Value) != "arn:aws:ecs:us-east-1:123456789012:task/ops/1" {
			t.Fatalf("activation %+v", a)
		}
		acts, _, err = list(&ssm.DescribeActivationsInput{Filters: f(types.DescribeActivationsFilterKeysActivationIds, expired.ActivationID)})
		if err != nil || len(acts) != 1 || !acts[0].Expired || aws.ToInt32(acts[0].RegistrationsCount) != 1 {
			t.Fatalf("expired activation: %+v, %v", acts, err)
		}
	})

	tests := []struct {
		name      string
		in        ssm.DescribeActivationsInput
		n, pages  int
		errorCode string
	}{
		{"all, default page size", ssm.DescribeActivationsInput{}, 14, 2, ""},
		{"max 1", ssm.DescribeActivationsInput{MaxResults: aws.Int32(1)}, 14, 14, ""},
		{"max 50", ssm.DescribeActivationsInput{MaxResults: aws.Int32(50)}, 14, 1, ""},
		{"name", ssm.DescribeActivationsInput{Filters: f(types.DescribeActivationsFilterKeysDefaultInstanceName, "n0", "n1"), MaxResults: aws.Int32(3)}, 8, 3, ""},
		{"role", ssm.DescribeActivationsInput{Filters: f(types.DescribeActivationsFilterKeysIamRole, "bastion-agent")}, 1, 1, ""},
		{"ids", ssm.DescribeActivationsInput{Filters: f(types.DescribeActivationsFilterKeysActivationIds, id, gone.ActivationID)}, 1, 1, ""},
		{"filters AND", ssm.DescribeActivationsInput{Filters: append(f(types.DescribeActivationsFilterKeysIamRole, "other"),
			f(types.DescribeActivationsFilterKeysDefaultInstanceName, "b1")...)}, 0, 1, ""},
		{"bad key", ssm.DescribeActivationsInput{Filters: f("Color", "red")}, 0, 0, "InvalidFilter"},
		{"no values", ssm.DescribeActivationsInput{Filters: f(types.DescribeActivationsFilterKeysIamRole)}, 0, 0, "InvalidFilter"},
		{"max 51", ssm.DescribeActivationsInput{MaxResults: aws.Int32(51)}, 0, 0, "ValidationException"},
		{"bad token", ssm.DescribeActivationsInput{NextToken: aws.String("garbage!")}, 0, 0, "InvalidNextToken"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			acts, pages, err := list(&tt.in)
			if got := apiCode(err); got != tt.errorCode {
				t.Fatalf("error %v, want code %q", err, tt.errorCode)
			}
			if err == nil && (len(acts) != tt.n || pages != tt.pages) {
				t.Fatalf("got %d activations in %d pages, want %d in %d", len(acts), pages, tt.n, tt.pages)
			}
			seen := map[string]bool{}
			for _, a := range acts {
				if seen[aws.ToString(a.ActivationId)] {
					t.Fatalf("activation %s listed twice", aws.ToString(a.ActivationId))
				}
				seen[aws.ToString(a.ActivationId)] = true
			}
		})
	}

	t.Run("errors", func(t *testing.T) {
		// The paginator drops MaxResults 0, so send it raw.
		status, out := rawCall(t, srv.URL(), "DescribeActivations", map[string]any{"MaxResults": 0}, "AKIDFAKE", "fakesecret", "us-east-1")
		if status != 400 || out["__type"] != "ValidationException" {
			t.Fatalf("MaxResults 0: %d %v", status, out)
		}
		var filt *types.InvalidFilter
		if _, err := c.DescribeActivations(ctx, &ssm.DescribeActivationsInput{Filters: f("Color", "red")}); !errors.As(err, &filt) {
			t.Fatalf("InvalidFilter not modeled: %v", err)
		}
	})
}

// TestRegisterInstanceInProcess: the Go API registers like the agent's call,
// with its errors, and the activation's tags reach the instance.
func TestRegisterInstanceInProcess(t *testing.T) {
	srv := fakessm.NewTest(t, fakessm.Options{})
	a := srv.AddActivation(fakessm.Activation{IamRole: "r", DefaultInstanceName: "jump", Tags: []fakessm.Tag{{Key: "team", Value: "db"}}})
	if _, err := srv.RegisterInstance(a.ActivationID, "wrong"); err == nil || !strings.HasPrefix(err.Error(), "InvalidActivation: ") {
		t.Fatalf("wrong code: %v", err)
	}
	in, err := srv.RegisterInstance(a.ActivationID, a.ActivationCode)
	if err != nil {
		t.Fatal(err)
	}
	if in.Name != "jump" || in.ActivationID != a.ActivationID || len(in.Tags) != 1 || in.PingStatus != fakessm.PingConnectionLost {
		t.Fatalf("instance %+v", in)
	}
	if _, err := srv.RegisterInstance(a.ActivationID, a.ActivationCode); err == nil || !strings.HasPrefix(err.Error(), "RegistrationLimitExceeded: ") {
		t.Fatalf("second registration: %v", err)
	}
	if got, ok := srv.Activation(a.ActivationID); !ok || got.RegistrationsCount != 1 {
		t.Fatalf("activation %+v", got)
	}
	// Deregistered by someone else: the agent's pings fail.
	if !srv.RemoveInstance(in.InstanceID) || srv.RemoveInstance(in.InstanceID) {
		t.Fatal("RemoveInstance")
	}
	status, out := rawCall(t, srv.URL(), "UpdateInstanceInformation", map[string]string{"InstanceId": in.InstanceID},
		in.InstanceID, fakessm.AgentSecret(in.InstanceID), srv.Region())
	if status != 400 || out["__type"] != "InvalidInstanceId" {
		t.Fatalf("ping after removal: %d %v", status, out)
	}
}

// TestDescribeSessions: the real request and response shapes (AWS-FACTS §7),
// State Active and History, the filters, paging, sessions made over the
// admin HTTP API and in Go.
func TestDescribeSessions(t *testing.T) {
	srv := fakessm.NewTest(t, fakessm.Options{})
	c := defaultClient(t, srv)
	ctx := context.Background()
	alice, err := srv.StartSession(fakessm.Session{Target: "mi-0123456789abcdef0", Owner: "arn:aws:sts::123456789012:assumed-role/Ops/alice"})
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`^alice-[0-9a-f]{17}$`).MatchString(alice.SessionID) || alice.Status != "Connected" || alice.DocumentName != "AWS-StartSSHSession" {
		t.Fatalf("session %+v", alice)
	}
	// Over HTTP, as a test driving a separate fake process would.
	body, _ := json.Marshal(fakessm.Session{SessionID: "bob-00000000000000001", Target: "mi-0123456789abcdef0", Owner: "arn:aws:iam::123456789012:user/bob"})
	resp, err := http.Post(srv.URL()+"/_fake/session", "application/json", bytes.NewReader(body))
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("POST /_fake/session: %v %v", err, resp)
	}
	resp.Body.Close()

	describe := func(state types.SessionState, filters ...types.SessionFilter) []types.Session {
		t.Helper()
		out, err := c.DescribeSessions(ctx, &ssm.DescribeSessionsInput{State: state, Filters: filters})
		if err != nil {
			t.Fatal(err)
		}
		return out.Sessions
	}
	byID := types.SessionFilter{Key: types.SessionFilterKeySessionId, Value: aws.String(alice.SessionID)}
	got := describe(types.SessionStateActive, byID)
	if len(got) != 1 || aws.ToString(got[0].Owner) != alice.Owner || aws.ToString(got[0].Target) != alice.Target ||
		got[0].Status != types.SessionStatusConnected || got[0].StartDate == nil || aws.ToString(got[0].DocumentName) != "AWS-StartSSHSession" {
		t.Fatalf("by id: %+v", got)
	}
	if got := describe(types.SessionStateActive); len(got) != 2 {
		t.Fatalf("all active: %d", len(got))
	}
	if got := describe(types.SessionStateActive, types.SessionFilter{Key: types.SessionFilterKeyOwner, Value: aws.String("arn:aws:iam::123456789012:user/bob")}); len(got) != 1 || aws.ToString(got[0].SessionId) != "bob-00000000000000001" {
		t.Fatalf("by owner: %+v", got)
	}
	if got := describe(types.SessionStateActive, types.SessionFilter{Key: types.SessionFilterKeyInvokedAfter, Value: aws.String(time.Now().Add(time.Hour).UTC().Format(time.RFC3339))}); len(got) != 0 {
		t.Fatalf("invoked after an hour from now: %+v", got)
	}

	// Ended: no longer Active, in History with an EndDate.
	end, _ := json.Marshal(fakessm.EndSessionRequest{SessionID: alice.SessionID})
	if resp, err := http.Post(srv.URL()+"/_fake/session/end", "application/json", bytes.NewReader(end)); err != nil || resp.StatusCode != 200 {
		t.Fatalf("end: %v %v", err, resp)
	}
	if got := describe(types.SessionStateActive, byID); len(got) != 0 {
		t.Fatalf("ended session still active: %+v", got)
	}
	if got := describe(types.SessionStateHistory, byID); len(got) != 1 || got[0].Status != types.SessionStatusTerminated || got[0].EndDate == nil {
		t.Fatalf("history: %+v", got)
	}

	// The wire: what the SDK sends and the fake's errors.
	var sent string
	for _, r := range srv.Requests() {
		if r.Op == "DescribeSessions" {
			sent = r.Body
			break
		}
	}
	if !strings.Contains(sent, `"State":"Active"`) || !strings.Contains(sent, `{"key":"SessionId","value":"`+alice.SessionID+`"}`) {
		t.Fatalf("request body %s", sent)
	}
	status, out := rawCall(t, srv.URL(), "DescribeSessions", map[string]any{"Filters": []any{}}, fakessm.DefaultAccessKeyID, fakessm.DefaultSecretAccessKey, "us-east-1")
	if status != 400 || out["__type"] != "ValidationException" {
		t.Fatalf("without State: %d %v", status, out)
	}
	status, out = rawCall(t, srv.URL(), "DescribeSessions", map[string]any{"State": "Active", "Filters": []any{map[string]string{"key": "Colour", "value": "x"}}},
		fakessm.DefaultAccessKeyID, fakessm.DefaultSecretAccessKey, "us-east-1")
	if status != 400 || out["__type"] != "ValidationException" {
		t.Fatalf("bad key: %d %v", status, out)
	}

	// Paging.
	for i := 0; i < 25; i++ {
		if _, err := srv.StartSession(fakessm.Session{Target: "mi-0123456789abcdef0", Owner: fmt.Sprintf("arn:aws:iam::123456789012:user/u%d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	pages := ssm.NewDescribeSessionsPaginator(c, &ssm.DescribeSessionsInput{State: types.SessionStateActive, MaxResults: aws.Int32(10)})
	n, calls := 0, 0
	for pages.HasMorePages() {
		p, err := pages.NextPage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		n, calls = n+len(p.Sessions), calls+1
	}
	if n != 26 || calls != 3 {
		t.Fatalf("%d sessions in %d pages, want 26 in 3", n, calls)
	}
	// A session that ends between two pages skips none of the others.
	first, err := c.DescribeSessions(ctx, &ssm.DescribeSessionsInput{State: types.SessionStateActive, MaxResults: aws.Int32(10)})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.EndSession(aws.ToString(first.Sessions[len(first.Sessions)-1].SessionId)); err != nil {
		t.Fatal(err)
	}
	rest, err := c.DescribeSessions(ctx, &ssm.DescribeSessionsInput{State: types.SessionStateActive, MaxResults: aws.Int32(20), NextToken: first.NextToken})
	if err != nil {
		t.Fatal(err)
	}
	if len(rest.Sessions) != 16 {
		t.Fatalf("after a session on the first page ended: %d on the next, want the other 16", len(rest.Sessions))
	}
	if n := len(srv.Snapshot().Sessions); n != 27 {
		t.Fatalf("state sessions %d", n)
	}
}
