package deploy

import (
	"encoding/json"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/bastion-dev/bastion/entrypoint"
	"github.com/bastion-dev/bastion/ssm"
)

// taskDef is the part of an ECS task definition the checks read.
type taskDef struct {
	Family                  string   `json:"family"`
	RequiresCompatibilities []string `json:"requiresCompatibilities"`
	NetworkMode             string   `json:"networkMode"`
	ExecutionRoleArn        string   `json:"executionRoleArn"`
	TaskRoleArn             string   `json:"taskRoleArn"`
	ContainerDefinitions    []struct {
		Name        string   `json:"name"`
		Image       string   `json:"image"`
		Essential   bool     `json:"essential"`
		EntryPoint  []string `json:"entryPoint"`
		Command     []string `json:"command"`
		StopTimeout int      `json:"stopTimeout"`
		Environment []struct {
			Name  string `json:"name"`
			Value string `json:"value"`
		} `json:"environment"`
		Secrets []struct {
			Name      string `json:"name"`
			ValueFrom string `json:"valueFrom"`
		} `json:"secrets"`
		HealthCheck *struct {
			Command  []string `json:"command"`
			Interval int      `json:"interval"`
			Timeout  int      `json:"timeout"`
		} `json:"healthCheck"`
		LinuxParameters *struct {
			InitProcessEnabled bool `json:"initProcessEnabled"`
		} `json:"linuxParameters"`
		PortMappings []struct {
			ContainerPort int `json:"containerPort"`
		} `json:"portMappings"`
		LogConfiguration *struct {
			LogDriver string            `json:"logDriver"`
			Options   map[string]string `json:"options"`
		} `json:"logConfiguration"`
	} `json:"containerDefinitions"`
}

// policy is an IAM policy document; Action, Resource and Condition values
// may be a string or a list.
type policy struct {
	Version   string `json:"Version"`
	Statement []struct {
		Sid       string                                `json:"Sid"`
		Effect    string                                `json:"Effect"`
		Principal map[string]stringList                 `json:"Principal"`
		Action    stringList                            `json:"Action"`
		Resource  stringList                            `json:"Resource"`
		Condition map[string]map[string]json.RawMessage `json:"Condition"`
	} `json:"Statement"`
}

type stringList []string

func (s *stringList) UnmarshalJSON(b []byte) error {
	var one string
	if err := json.Unmarshal(b, &one); err == nil {
		*s = []string{one}
		return nil
	}
	var many []string
	if err := json.Unmarshal(b, &many); err != nil {
		return err
	}
	*s = many
	return nil
}

func readJSON(t *testing.T, name string, v any) {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(strings.NewReader(string(b)))
	if err := dec.Decode(v); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
}

func readPolicy(t *testing.T, name string) policy {
	t.Helper()
	var p policy
	readJSON(t, name, &p)
	if p.Version != "2012-10-17" || len(p.Statement) == 0 {
		t.Fatalf("%s: not an IAM policy document (Version %q, %d statements)", name, p.Version, len(p.Statement))
	}
	for i, st := range p.Statement {
		if st.Effect != "Allow" && st.Effect != "Deny" {
			t.Fatalf("%s: statement %d: Effect %q", name, i, st.Effect)
		}
		if len(st.Action) == 0 {
			t.Fatalf("%s: statement %d has no Action", name, i)
		}
		if len(st.Resource) == 0 && st.Principal == nil {
			t.Fatalf("%s: statement %d has neither Resource nor Principal", name, i)
		}
	}
	return p
}

// iamMatch reports whether value matches an IAM pattern with * and ?
// (case-sensitive, as resources are; actions are compared lower-cased).
func iamMatch(pattern, value string) bool {
	ok, err := path.Match(strings.NewReplacer("/", "\x00").Replace(pattern), strings.NewReplacer("/", "\x00").Replace(value))
	return err == nil && ok
}

// allows reports whether an Allow statement of p grants action, and returns
// those statements.
func (p policy) allows(action string) []int {
	var idx []int
	for i, st := range p.Statement {
		if st.Effect != "Allow" {
			continue
		}
		for _, a := range st.Action {
			if iamMatch(strings.ToLower(a), strings.ToLower(action)) {
				idx = append(idx, i)
				break
			}
		}
	}
	return idx
}

func TestEveryFileParses(t *testing.T) {
	files, _ := filepath.Glob("*.json")
	if len(files) < 7 {
		t.Fatalf("deployment files missing: %v", files)
	}
	for _, f := range files {
		var v any
		readJSON(t, f, &v)
		if strings.HasPrefix(f, "iam-") && strings.HasSuffix(f, "-policy.json") || strings.HasSuffix(f, "-trust.json") {
			readPolicy(t, f)
		}
	}
}

func loadTaskDef(t *testing.T) taskDef {
	var td taskDef
	readJSON(t, "ecs-task-definition.json", &td)
	if len(td.ContainerDefinitions) != 1 {
		t.Fatalf("want one container, got %d", len(td.ContainerDefinitions))
	}
	return td
}

func TestTaskDefinitionMatchesCode(t *testing.T) {
	td := loadTaskDef(t)
	c := td.ContainerDefinitions[0]
	if !slices.Contains(td.RequiresCompatibilities, "FARGATE") || td.NetworkMode != "awsvpc" {
		t.Fatalf("not a Fargate task definition: %v %q", td.RequiresCompatibilities, td.NetworkMode)
	}
	known := map[string]bool{}
	for _, v := range entrypoint.Variables() {
		known[v.Name] = true
	}
	env := map[string]string{}
	for _, e := range c.Environment {
		if !known[e.Name] {
			t.Errorf("environment variable %s is not one bastion reads (entrypoint.Variables)", e.Name)
		}
		if slices.Contains(entrypoint.SecretVars, e.Name) {
			t.Errorf("%s must come from secrets, not plain environment", e.Name)
		}
		if _, dup := env[e.Name]; dup {
			t.Errorf("environment variable %s twice", e.Name)
		}
		env[e.Name] = e.Value
	}
	var secretNames []string
	for _, s := range c.Secrets {
		secretNames = append(secretNames, s.Name)
		if !strings.HasPrefix(s.ValueFrom, "arn:aws:secretsmanager:") {
			t.Errorf("secret %s: valueFrom %q is not a Secrets Manager ARN", s.Name, s.ValueFrom)
		}
	}
	// The three keys always come from Secrets Manager; the other secret
	// variables (BASTION_NOTIFY_URL) are optional, and from secrets when set.
	slices.Sort(secretNames)
	for _, name := range []string{"ROOT_PUBLIC_SSH_KEY_BASE64ENCODED", "SSH_PRIVATE_HOST_KEY_BASE64ENCODED", "SSH_PUBLIC_HOST_KEY_BASE64ENCODED"} {
		if !slices.Contains(secretNames, name) {
			t.Errorf("secrets %v lack %s", secretNames, name)
		}
	}
	for _, name := range secretNames {
		if !slices.Contains(entrypoint.SecretVars, name) {
			t.Errorf("secret %s is not one of bastion's secret variables %v", name, entrypoint.SecretVars)
		}
	}
	for _, name := range []string{"INSTANCE_IAM_ROLE", "AWS_REGION", "BASTION_STOP_TIMEOUT"} {
		if env[name] == "" {
			t.Errorf("environment lacks %s", name)
		}
	}

	stop, err := time.ParseDuration(env["BASTION_STOP_TIMEOUT"])
	if err != nil {
		t.Fatalf("BASTION_STOP_TIMEOUT %q: %v", env["BASTION_STOP_TIMEOUT"], err)
	}
	if c.StopTimeout <= 0 || c.StopTimeout > 120 {
		t.Errorf("stopTimeout %d: Fargate allows 1..120 s", c.StopTimeout)
	}
	if time.Duration(c.StopTimeout)*time.Second != stop {
		t.Errorf("stopTimeout %ds != BASTION_STOP_TIMEOUT %v: ECS would SIGKILL before (or after) bastion's shutdown budget", c.StopTimeout, stop)
	}
	if c.HealthCheck == nil || !slices.Equal(c.HealthCheck.Command, []string{"CMD", "/usr/local/bin/bastion", "healthcheck"}) {
		t.Errorf("healthCheck command must be [CMD /usr/local/bin/bastion healthcheck]: %+v", c.HealthCheck)
	} else if c.HealthCheck.Timeout < 2 {
		t.Errorf("healthCheck timeout %d s is too tight", c.HealthCheck.Timeout)
	}
	if c.LogConfiguration == nil || c.LogConfiguration.LogDriver != "awslogs" ||
		c.LogConfiguration.Options["awslogs-region"] != env["AWS_REGION"] {
		t.Errorf("logConfiguration must be awslogs in AWS_REGION: %+v", c.LogConfiguration)
	}
	if len(c.EntryPoint) != 0 || len(c.Command) != 0 {
		t.Errorf("entryPoint/command must not override the image's ENTRYPOINT (bastion is PID 1): %v %v", c.EntryPoint, c.Command)
	}
	if c.LinuxParameters != nil && c.LinuxParameters.InitProcessEnabled {
		t.Errorf("initProcessEnabled would put another init in front of bastion")
	}
	if !c.Essential {
		t.Errorf("the bastion container must be essential")
	}
	if len(c.PortMappings) != 1 || c.PortMappings[0].ContainerPort != 22 {
		t.Errorf("portMappings: want container port 22 (BASTION_SSH_ADDR default :22): %+v", c.PortMappings)
	}
	if a := env["BASTION_SSH_ADDR"]; a != "" && !strings.HasSuffix(a, ":22") {
		t.Errorf("BASTION_SSH_ADDR %q does not match containerPort 22", a)
	}

	// The roles named in the task definition are the ones the policies are for.
	exec := readPolicy(t, "iam-execution-role-policy.json")
	for _, s := range c.Secrets {
		granted := false
		for _, i := range exec.allows("secretsmanager:GetSecretValue") {
			for _, r := range exec.Statement[i].Resource {
				granted = granted || iamMatch(r, s.ValueFrom)
			}
		}
		if !granted {
			t.Errorf("execution role policy does not grant secretsmanager:GetSecretValue on %s (%s)", s.ValueFrom, s.Name)
		}
	}
	// The live key source is read with the task role, for the life of the task.
	if secret := env["BASTION_AUTHORIZED_KEYS_SECRET"]; secret != "" {
		task := readPolicy(t, "iam-task-role-policy.json")
		for _, action := range []string{"secretsmanager:DescribeSecret", "secretsmanager:GetSecretValue"} {
			granted := false
			for _, i := range task.allows(action) {
				for _, r := range task.Statement[i].Resource {
					granted = granted || iamMatch(r, secret)
				}
			}
			if !granted {
				t.Errorf("task role policy does not grant %s on BASTION_AUTHORIZED_KEYS_SECRET %s", action, secret)
			}
		}
	}
	if group := c.LogConfiguration.Options["awslogs-group"]; group != "" {
		arn := "arn:aws:logs:" + env["AWS_REGION"] + ":123456789012:log-group:" + group + ":log-stream:x"
		granted := false
		for _, i := range exec.allows("logs:PutLogEvents") {
			for _, r := range exec.Statement[i].Resource {
				granted = granted || iamMatch(r, arn)
			}
		}
		if !granted {
			t.Errorf("execution role policy does not let awslogs write to %s", group)
		}
	}
	task := readPolicy(t, "iam-task-role-policy.json")
	roleARN := ":role/" + env["INSTANCE_IAM_ROLE"]
	passes := task.allows("iam:PassRole")
	if len(passes) == 0 {
		t.Fatal("task role policy does not grant iam:PassRole")
	}
	for _, i := range passes {
		st := task.Statement[i]
		for _, r := range st.Resource {
			if r == "*" || !strings.HasSuffix(r, roleARN) {
				t.Errorf("iam:PassRole on %q: must be the agent role %s only", r, env["INSTANCE_IAM_ROLE"])
			}
		}
		if got := condValue(t, st.Condition, "StringEquals", "iam:PassedToService"); got != "ssm.amazonaws.com" {
			t.Errorf("iam:PassRole without iam:PassedToService = ssm.amazonaws.com (got %q)", got)
		}
	}
	if group := env["CLOUDWATCH_RECEIVER_LOG_GROUP"]; group != "" {
		agent := readPolicy(t, "iam-agent-role-policy.json")
		arn := "arn:aws:logs:" + env["AWS_REGION"] + ":123456789012:log-group:" + group + ":log-stream:mi-0123456789abcdef0"
		granted := false
		for _, i := range agent.allows("logs:PutLogEvents") {
			for _, r := range agent.Statement[i].Resource {
				granted = granted || iamMatch(r, arn)
			}
		}
		if !granted {
			t.Errorf("agent role policy does not let the agent write to CLOUDWATCH_RECEIVER_LOG_GROUP %s", group)
		}
	}
}

func condValue(t *testing.T, cond map[string]map[string]json.RawMessage, op, key string) string {
	t.Helper()
	raw, ok := cond[op][key]
	if !ok {
		return ""
	}
	var s stringList
	if err := json.Unmarshal(raw, &s); err != nil || len(s) != 1 {
		t.Fatalf("condition %s %s: %s", op, key, raw)
	}
	return s[0]
}

// hintActions are the IAM actions the ssm package names in its
// access-denied hints ("the ECS task role needs ssm:X …", ecs:DescribeTasks
// for the orphan sweep).
func hintActions(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob("../ssm/*.go")
	if err != nil || len(files) == 0 {
		t.Fatalf("no ssm sources: %v", err)
	}
	re := regexp.MustCompile(`\b(?:ssm|iam|ecs):[A-Z][A-Za-z]+\b`)
	seen := map[string]bool{}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range re.FindAllString(string(b), -1) {
			seen[m] = true
		}
	}
	var out []string
	for a := range seen {
		out = append(out, a)
	}
	slices.Sort(out)
	return out
}

func TestTaskRoleGrantsEveryActionTheCodeNeeds(t *testing.T) {
	actions := hintActions(t)
	for _, must := range []string{"ssm:CreateActivation", "ssm:DeleteActivation", "ssm:DeregisterManagedInstance",
		"ssm:DescribeInstanceInformation", "ssm:GetServiceSetting", "iam:PassRole", "ssm:ListTagsForResource", "ecs:DescribeTasks", "ssm:DescribeSessions"} {
		if !slices.Contains(actions, must) {
			t.Errorf("the ssm package no longer names %s in a hint; the regexp or the hints changed", must)
		}
	}
	task := readPolicy(t, "iam-task-role-policy.json")
	for _, a := range append(actions, "ssm:AddTagsToResource", "ssm:DescribeActivations") {
		if len(task.allows(a)) == 0 {
			t.Errorf("iam-task-role-policy.json does not grant %s, which the ssm package calls", a)
		}
	}
	for _, st := range task.Statement {
		for _, a := range st.Action {
			if a == "*" || a == "ssm:*" || a == "iam:*" {
				t.Errorf("task role policy grants %q: too broad", a)
			}
		}
	}
}

// TestDescribeTasksScoped: the orphan sweep may describe the tasks of the
// service's cluster only.
func TestDescribeTasksScoped(t *testing.T) {
	task := readPolicy(t, "iam-task-role-policy.json")
	idx := task.allows("ecs:DescribeTasks")
	if len(idx) == 0 {
		t.Fatal("no ecs:DescribeTasks statement")
	}
	for _, i := range idx {
		st := task.Statement[i]
		for _, r := range st.Resource {
			if !strings.HasPrefix(r, "arn:aws:ecs:") || !strings.Contains(r, ":task/") {
				t.Errorf("ecs:DescribeTasks on %q: want task resources", r)
			}
		}
		if condValue(t, st.Condition, "ArnEquals", "ecs:cluster") == "" {
			t.Errorf("ecs:DescribeTasks not conditioned on ecs:cluster")
		}
	}
}

func TestPolicyTagKeysAreTheCodes(t *testing.T) {
	ours := map[string]bool{ssm.TagCluster: true, ssm.TagFamily: true, ssm.TagTaskARN: true, ssm.TagManagedBy: true}
	files, _ := filepath.Glob("iam-*.json")
	for _, f := range files {
		b, _ := os.ReadFile(f)
		for _, m := range regexp.MustCompile(`resourceTag/(bastion:[^"]+)`).FindAllStringSubmatch(string(b), -1) {
			if !ours[m[1]] {
				t.Errorf("%s: tag key %q is not one of the ssm package's (TagCluster, TagFamily, TagTaskARN, TagManagedBy)", f, m[1])
			}
		}
	}
	task := readPolicy(t, "iam-task-role-policy.json")
	dereg := task.allows("ssm:DeregisterManagedInstance")
	if len(dereg) == 0 {
		t.Fatal("no ssm:DeregisterManagedInstance statement")
	}
	for _, i := range dereg {
		st := task.Statement[i]
		for _, r := range st.Resource {
			if !strings.Contains(r, ":managed-instance/") {
				t.Errorf("ssm:DeregisterManagedInstance on %q: want managed-instance resources", r)
			}
		}
		for _, key := range []string{ssm.TagCluster, ssm.TagFamily} {
			if condValue(t, st.Condition, "StringEquals", "ssm:resourceTag/"+key) == "" {
				t.Errorf("ssm:DeregisterManagedInstance not conditioned on ssm:resourceTag/%s", key)
			}
		}
		if v := condValue(t, st.Condition, "StringEquals", "ssm:resourceTag/"+ssm.TagManagedBy); v != "" && v != ssm.TagManagedByValue {
			t.Errorf("ssm:resourceTag/%s = %q, the code sets %q", ssm.TagManagedBy, v, ssm.TagManagedByValue)
		}
		td := loadTaskDef(t)
		if fam := condValue(t, st.Condition, "StringEquals", "ssm:resourceTag/"+ssm.TagFamily); fam != td.Family {
			t.Errorf("ssm:resourceTag/%s = %q, task definition family is %q", ssm.TagFamily, fam, td.Family)
		}
	}
}

func TestAgentRole(t *testing.T) {
	trust := readPolicy(t, "iam-agent-role-trust.json")
	st := trust.Statement[0]
	if !slices.Equal(st.Principal["Service"], []string{"ssm.amazonaws.com"}) || !slices.Equal(st.Action, []string{"sts:AssumeRole"}) {
		t.Fatalf("agent role must trust ssm.amazonaws.com (sts:AssumeRole): %+v", st)
	}
	var managed struct {
		RoleName   string
		PolicyArns []string
	}
	readJSON(t, "iam-agent-role-managed-policies.json", &managed)
	if !slices.Contains(managed.PolicyArns, "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore") {
		t.Errorf("AmazonSSMManagedInstanceCore missing: %v", managed.PolicyArns)
	}
	td := loadTaskDef(t)
	for _, e := range td.ContainerDefinitions[0].Environment {
		if e.Name == "INSTANCE_IAM_ROLE" && e.Value != managed.RoleName {
			t.Errorf("INSTANCE_IAM_ROLE %q but the managed policies are for %q", e.Value, managed.RoleName)
		}
	}
}

func TestUserPolicy(t *testing.T) {
	p := readPolicy(t, "iam-user-policy.json")
	var instance, document bool
	for _, i := range p.allows("ssm:StartSession") {
		st := p.Statement[i]
		for _, r := range st.Resource {
			switch {
			case strings.Contains(r, ":managed-instance/"):
				instance = true
				if condValue(t, st.Condition, "StringEquals", "ssm:resourceTag/team") != "${aws:PrincipalTag/team}" {
					t.Errorf("StartSession on instances must require ssm:resourceTag/team = ${aws:PrincipalTag/team}")
				}
			case strings.HasSuffix(r, ":document/AWS-StartSSHSession"):
				document = true
			case strings.Contains(r, ":document/"):
				t.Errorf("StartSession allows document %s; only AWS-StartSSHSession", r)
			default:
				t.Errorf("StartSession on unexpected resource %s", r)
			}
		}
	}
	if !instance || !document {
		t.Errorf("StartSession must be granted on team-tagged managed instances and the AWS-StartSSHSession document")
	}
	for _, a := range []string{"ssm:TerminateSession", "ssm:ResumeSession"} {
		for _, i := range p.allows(a) {
			for _, r := range p.Statement[i].Resource {
				if !strings.Contains(r, ":session/${aws:") {
					t.Errorf("%s on %s: only the caller's own sessions", a, r)
				}
			}
		}
		if len(p.allows(a)) == 0 {
			t.Errorf("%s not granted", a)
		}
	}
}

// dockerLines returns the instructions that define how the container runs.
func dockerLines(t *testing.T, file string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	text := strings.ReplaceAll(string(b), "\\\n", " ")
	out := map[string]string{}
	for _, line := range strings.Split(text, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || strings.HasPrefix(f[0], "#") {
			continue
		}
		switch strings.ToUpper(f[0]) {
		case "ENTRYPOINT", "EXPOSE", "STOPSIGNAL":
			out[strings.ToUpper(f[0])] = strings.Join(f[1:], " ")
		case "HEALTHCHECK":
			i := slices.Index(f, "CMD")
			if i < 0 {
				t.Fatalf("%s: HEALTHCHECK without CMD", file)
			}
			out["HEALTHCHECK"] = strings.Join(f[i:], " ")
		}
	}
	return out
}

func TestDockerfilesAgree(t *testing.T) {
	prod := dockerLines(t, "../Dockerfile")
	scratch := dockerLines(t, "../test/docker/Dockerfile.scratch")
	want := map[string]string{
		"ENTRYPOINT":  `["/usr/local/bin/bastion"]`,
		"EXPOSE":      "22",
		"STOPSIGNAL":  "SIGTERM",
		"HEALTHCHECK": `CMD ["/usr/local/bin/bastion", "healthcheck"]`,
	}
	for k, v := range want {
		if prod[k] != v {
			t.Errorf("Dockerfile %s = %q, want %q", k, prod[k], v)
		}
		if scratch[k] != v {
			t.Errorf("test/docker/Dockerfile.scratch %s = %q, want %q", k, scratch[k], v)
		}
	}
	raw, _ := os.ReadFile("../Dockerfile")
	var code []string
	for _, line := range strings.Split(string(raw), "\n") {
		if !strings.HasPrefix(strings.TrimSpace(line), "#") {
			code = append(code, line)
		}
	}
	b := []byte(strings.Join(code, "\n"))
	// The Go image is go.mod's Go, so that `docker build` compiles what
	// go.mod asks for without a toolchain download.
	gomod, err := os.ReadFile("../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	goVersion := regexp.MustCompile(`(?m)^go (\S+)$`).FindSubmatch(gomod)
	if goVersion == nil {
		t.Fatal("go.mod has no go line")
	}
	goImage := `(?m)^ARG GO_IMAGE=golang:` + regexp.QuoteMeta(string(goVersion[1])) + `-bookworm@sha256:[0-9a-f]{64}$`
	for _, re := range []string{goImage, `(?m)^ARG RUNTIME_IMAGE=amazonlinux:2023@sha256:[0-9a-f]{64}$`} {
		if !regexp.MustCompile(re).Match(b) {
			t.Errorf("Dockerfile: base image not pinned by digest (%s)", re)
		}
	}
	for _, banned := range []string{"awscli", "aws-cli", " jq", "mustache"} {
		if strings.Contains(string(b), banned) {
			t.Errorf("Dockerfile installs %q; bastion needs none of it", strings.TrimSpace(banned))
		}
	}
	if !strings.Contains(string(b), "rpm --checksig") {
		t.Errorf("Dockerfile does not verify the agent RPM's signature")
	}
}
