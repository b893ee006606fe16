package ssm

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs:\n got:\n%s\nwant:\n%s", name, got, want)
	}
}

func TestRenderSeelog(t *testing.T) {
	tests := []struct {
		name, logGroup, golden string
	}{
		{"files", "", "seelog.xml"},
		{"cloudwatch", "/ecs/bastion/ssm-agent", "seelog_cloudwatch.xml"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := RenderSeelog(tt.logGroup)
			if err != nil {
				t.Fatal(err)
			}
			golden(t, tt.golden, got)
			// Well-formed XML, and the receiver is there exactly when asked.
			var doc struct {
				Outputs struct {
					Custom []struct {
						Name     string `xml:"name,attr"`
						LogGroup string `xml:"data-log-group,attr"`
						Session  string `xml:"data-session-worker-log-group,attr"`
					} `xml:"custom"`
					Console *struct{} `xml:"console"`
				} `xml:"outputs"`
			}
			if err := xml.Unmarshal(got, &doc); err != nil {
				t.Fatalf("not XML: %v", err)
			}
			if doc.Outputs.Console == nil {
				t.Errorf("console output missing")
			}
			if tt.logGroup == "" && len(doc.Outputs.Custom) != 0 {
				t.Errorf("receiver without log group")
			}
			if tt.logGroup != "" {
				c := doc.Outputs.Custom
				if len(c) != 1 || c[0].Name != "cloudwatch_receiver" || c[0].LogGroup != tt.logGroup || c[0].Session != tt.logGroup {
					t.Errorf("receiver = %+v", c)
				}
			}
		})
	}
	if _, err := RenderSeelog(`x" data-evil="1`); err == nil {
		t.Errorf("invalid log group rendered")
	}
}

func TestXMLAttr(t *testing.T) {
	got, err := xmlAttr(`a"b<c>&d'e`)
	if err != nil {
		t.Fatal(err)
	}
	if got != "a&#34;b&lt;c&gt;&amp;d&#39;e" {
		t.Errorf("xmlAttr = %q", got)
	}
}

func TestRenderAgentConfig(t *testing.T) {
	tests := []struct {
		name, region, endpoint, golden string
	}{
		{"region only", "us-east-1", "", "amazon-ssm-agent.json"},
		{"endpoint", "ap-northeast-1", "https://vpce-0123-abcd.ssm.ap-northeast-1.vpce.amazonaws.com", "amazon-ssm-agent_endpoint.json"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := RenderAgentConfig(tt.region, tt.endpoint)
			if err != nil {
				t.Fatal(err)
			}
			golden(t, tt.golden, got)
			var c struct {
				Profile  struct{ ShareCreds *bool }
				Identity struct{ ConsumptionOrder []string }
				Mgs      struct{ DeniedPortForwardingRemoteIPs []string }
				Ssm      struct{ Endpoint, OrchestrationDirectoryCleanup string }
				Agent    struct {
					Region        string
					ContainerMode *bool
				}
			}
			if err := json.Unmarshal(got, &c); err != nil {
				t.Fatal(err)
			}
			ips := strings.Join(c.Mgs.DeniedPortForwardingRemoteIPs, ",")
			switch {
			case c.Profile.ShareCreds == nil || *c.Profile.ShareCreds:
				t.Errorf("ShareCreds not false")
			case strings.Join(c.Identity.ConsumptionOrder, ",") != "OnPrem":
				t.Errorf("ConsumptionOrder = %v", c.Identity.ConsumptionOrder)
			case !strings.HasPrefix(ips, "169.254.169.254,fd00:ec2::254,") || !strings.HasSuffix(ips, ",fd00:ec2::240,169.254.170.2"):
				t.Errorf("DeniedPortForwardingRemoteIPs = %s", ips)
			case c.Ssm.OrchestrationDirectoryCleanup != "clean-success-failed":
				t.Errorf("OrchestrationDirectoryCleanup = %q", c.Ssm.OrchestrationDirectoryCleanup)
			case c.Ssm.Endpoint != tt.endpoint || c.Agent.Region != tt.region:
				t.Errorf("endpoint %q region %q", c.Ssm.Endpoint, c.Agent.Region)
			case c.Agent.ContainerMode == nil || *c.Agent.ContainerMode:
				t.Errorf("ContainerMode not false")
			}
		})
	}
}
