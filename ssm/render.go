package ssm

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"strings"
	"text/template"

	"github.com/bastion-dev/bastion/internal/atomicfile"
)

// seelogTemplate follows the agent's seelog_unix.xml: console output kept so
// the agent's log reaches the container log. With a log group, the agent's
// CloudWatch receiver replaces the rolling files (attributes: name, formatid
// and data-*; the session worker ships only with its own attribute);
// without one, the rolling files stay as in the agent's template.
var seelogTemplate = template.Must(template.New("seelog.xml").Funcs(template.FuncMap{
	"attr": xmlAttr,
}).Parse(`<!-- rendered by bastion; changes are overwritten at start -->
<seelog type="adaptive" mininterval="2000000" maxinterval="100000000" critmsgcount="500" minlevel="info">
    <exceptions>
        <exception filepattern="test*" minlevel="error"/>
    </exceptions>
    <outputs formatid="fmtinfo">
        <console formatid="fmtinfo"/>
{{- if .LogGroup}}
        <custom name="cloudwatch_receiver" formatid="fmtinfo" data-log-group="{{attr .LogGroup}}" data-session-worker-log-group="{{attr .LogGroup}}"/>
{{- else}}
        <rollingfile type="size" filename="/var/log/amazon/ssm/amazon-ssm-agent.log" maxsize="30000000" maxrolls="5"/>
        <filter levels="error,critical" formatid="fmterror">
            <rollingfile type="size" filename="/var/log/amazon/ssm/errors.log" maxsize="10000000" maxrolls="5"/>
        </filter>
{{- end}}
    </outputs>
    <formats>
        <format id="fmterror" format="%Date(2006-01-02 15:04:05.0000) %LEVEL [%FuncShort @ %File.%Line] %Msg%n"/>
        <format id="fmtdebug" format="%Date(2006-01-02 15:04:05.0000) %LEVEL [%FuncShort @ %File.%Line] %Msg%n"/>
        <format id="fmtinfo" format="%Date(2006-01-02 15:04:05.0000) %LEVEL %Msg%n"/>
    </formats>
</seelog>
`))

// xmlAttr escapes s for a double-quoted XML attribute.
func xmlAttr(s string) (string, error) {
	var b strings.Builder
	if err := xml.EscapeText(&b, []byte(s)); err != nil {
		return "", err
	}
	return b.String(), nil
}

// RenderSeelog returns /etc/amazon/ssm/seelog.xml for the agent. An empty
// logGroup means no CloudWatch receiver. A logGroup that is not a valid
// CloudWatch Logs group name is an error.
func RenderSeelog(logGroup string) ([]byte, error) {
	if logGroup != "" && !logGroupPattern.MatchString(logGroup) {
		return nil, fmt.Errorf("ssm: render seelog: invalid log group name %q", logGroup)
	}
	var b bytes.Buffer
	if err := seelogTemplate.Execute(&b, struct{ LogGroup string }{logGroup}); err != nil {
		return nil, fmt.Errorf("ssm: render seelog: %w", err)
	}
	return b.Bytes(), nil
}

// DefaultDeniedPortForwardingRemoteIPs is the agent's own default of
// Mgs.DeniedPortForwardingRemoteIPs (agent/appconfig/constants.go at
// 1c217c8: IMDS, VPC DNS, Time Sync, Windows activation, v4 and v6). A list
// in amazon-ssm-agent.json replaces the default, so it is repeated in full.
var DefaultDeniedPortForwardingRemoteIPs = []string{
	"169.254.169.254", "fd00:ec2::254",
	"169.254.169.253", "fd00:ec2::253",
	"169.254.169.123", "fd00:ec2::123",
	"169.254.169.250", "169.254.169.251", "fd00:ec2::240",
}

// ECSEndpointIP is the ECS task metadata and credentials endpoint, added to
// the agent's port-forwarding deny list.
const ECSEndpointIP = "169.254.170.2"

// agentConfig is the part of the agent's SsmagentConfig
// (agent/appconfig/contracts.go) that bastion sets; every other field keeps
// the agent's default.
type agentConfig struct {
	Profile struct {
		// ShareCreds false: the agent must not write the hybrid role's
		// credentials to ~/.aws/credentials, where they would take
		// precedence over the task role for bastion's own SDK calls.
		ShareCreds bool
	}
	Identity struct {
		ConsumptionOrder []string
	}
	Mgs struct {
		DeniedPortForwardingRemoteIPs []string
	}
	Ssm struct {
		Endpoint                      string `json:",omitempty"`
		OrchestrationDirectoryCleanup string
	}
	Agent struct {
		Region        string `json:",omitempty"`
		ContainerMode bool
	}
}

// RenderAgentConfig returns /etc/amazon/ssm/amazon-ssm-agent.json, hardened:
// Profile.ShareCreds false, Identity.ConsumptionOrder ["OnPrem"],
// Ssm.OrchestrationDirectoryCleanup "clean-success-failed",
// Mgs.DeniedPortForwardingRemoteIPs the agent's defaults plus 169.254.170.2,
// Agent.ContainerMode false. region and ssmEndpoint are rendered as
// Agent.Region and Ssm.Endpoint when not empty.
func RenderAgentConfig(region, ssmEndpoint string) ([]byte, error) {
	var c agentConfig
	c.Profile.ShareCreds = false
	c.Identity.ConsumptionOrder = []string{"OnPrem"}
	c.Mgs.DeniedPortForwardingRemoteIPs = append(append([]string{}, DefaultDeniedPortForwardingRemoteIPs...), ECSEndpointIP)
	c.Ssm.Endpoint = ssmEndpoint
	c.Ssm.OrchestrationDirectoryCleanup = "clean-success-failed"
	c.Agent.Region = region
	c.Agent.ContainerMode = false
	b, err := json.MarshalIndent(c, "", "    ")
	if err != nil {
		return nil, fmt.Errorf("ssm: render agent config: %w", err)
	}
	return append(b, '\n'), nil
}

// renderConfig writes the agent's seelog.xml and amazon-ssm-agent.json. It
// runs before "-register", which reads Ssm.Endpoint too.
func (l *Lifecycle) renderConfig() error {
	seelog, err := RenderSeelog(l.cfg.LogGroup)
	if err != nil {
		return err
	}
	agentCfg, err := RenderAgentConfig(l.cfg.Region, l.cfg.Endpoint)
	if err != nil {
		return err
	}
	if err := atomicfile.Write(l.path(SeelogPath), seelog, 0o644); err != nil {
		return fmt.Errorf("ssm: write seelog config: %w", err)
	}
	if err := atomicfile.Write(l.path(AgentConfigPath), agentCfg, 0o644); err != nil {
		return fmt.Errorf("ssm: write agent config: %w", err)
	}
	l.log.Info("agent config rendered", "step", "config", "seelog", SeelogPath, "agent_config", AgentConfigPath,
		"cloudwatch_log_group", l.cfg.LogGroup, "ssm_endpoint", l.cfg.Endpoint)
	return nil
}
