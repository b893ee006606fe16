package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ssm/types"
	gossh "golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/bastion-dev/bastion/entrypoint"
	"github.com/bastion-dev/bastion/ssm"
)

// sshDocument is the Session Manager document that tunnels SSH; the IAM
// user policy (deploy/iam-user-policy.json) allows only this one.
const sshDocument = "AWS-StartSSHSession"

// tagFlags collects repeated -tag key=value flags.
type tagFlags []types.InstanceInformationStringFilter

func (t *tagFlags) String() string { return "" }

func (t *tagFlags) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return fmt.Errorf("want key=value")
	}
	*t = append(*t, types.InstanceInformationStringFilter{Key: aws.String("tag:" + k), Values: []string{v}})
	return nil
}

// sshConfig finds the bastion's managed instance (Online only) and prints a
// ~/.ssh/config block that reaches it through Session Manager. Exit 0 with
// the block on w; 1 when the lookup fails or is ambiguous; 2 on bad usage.
func sshConfig(w, errw io.Writer, args []string) int {
	fs := flag.NewFlagSet("ssh-config", flag.ContinueOnError)
	fs.SetOutput(errw)
	name := fs.String("name", "", "managed instance name (INSTANCE_NAME, or <family>-<task id> on ECS)")
	var tags tagFlags
	fs.Var(&tags, "tag", "select by tag key=value (repeatable; all must match)")
	alias := fs.String("alias", "bastion", "Host alias to write (also the HostKeyAlias)")
	region := fs.String("region", firstNonEmpty(os.Getenv("AWS_REGION"), os.Getenv("AWS_DEFAULT_REGION")), "AWS region (default $AWS_REGION)")
	hostKeyFile := fs.String("host-key", "", "file with the bastion's public host key (base64 or plain; default $SSH_PUBLIC_HOST_KEY_BASE64ENCODED)")
	user := fs.String("user", "root", "SSH user")
	first := fs.Bool("first", false, "with several matches, take the most recently registered one")
	timeout := fs.Duration("timeout", 60*time.Second, "give up the lookup after this long")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: bastion ssh-config (-name NAME | -tag KEY=VALUE ...) [-alias HOST] [-region R] [-host-key FILE] [-first]")
		fs.PrintDefaults()
	}
	// Help goes to stdout and is not an error; nothing else happens.
	if helpRequested(args) {
		fs.SetOutput(w)
		fs.Usage()
		return 0
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() != 0 {
		fmt.Fprintf(errw, "bastion ssh-config: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	if *name == "" && len(tags) == 0 {
		fmt.Fprintln(errw, "bastion ssh-config: give -name NAME or -tag KEY=VALUE to select the bastion")
		return 2
	}
	if *region == "" {
		fmt.Fprintln(errw, "bastion ssh-config: no region: set AWS_REGION or pass -region")
		return 2
	}
	if *alias == "" || strings.ContainsAny(*alias, " \t*?!,") {
		fmt.Fprintf(errw, "bastion ssh-config: -alias %q: want a plain host name\n", *alias)
		return 2
	}

	hostKey, keySource, err := sshConfigHostKey(*hostKeyFile)
	if err != nil {
		fmt.Fprintf(errw, "bastion ssh-config: %v\n", err)
		return 1
	}

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	api, err := ssm.NewAPI(ctx, ssm.Config{Region: *region})
	if err != nil {
		fmt.Fprintf(errw, "bastion ssh-config: %v\n", err)
		return 1
	}
	found, err := findOnline(ctx, api, *name, tags)
	if err != nil {
		fmt.Fprintf(errw, "bastion ssh-config: %v\n", err)
		return 1
	}
	selector := describeSelector(*name, tags)
	switch {
	case len(found) == 0:
		fmt.Fprintf(errw, "bastion ssh-config: no Online managed instance %s in %s (is the bastion task running and registered?)\n", selector, *region)
		return 1
	case len(found) > 1 && !*first:
		fmt.Fprintf(errw, "bastion ssh-config: %d Online managed instances %s in %s; narrow the selection or pass -first:\n", len(found), selector, *region)
		for _, ii := range found {
			fmt.Fprintf(errw, "  %s  %s  registered %s\n", aws.ToString(ii.InstanceId), aws.ToString(ii.Name), timeText(ii.RegistrationDate))
		}
		return 1
	}
	ii := found[0]
	writeSSHConfig(w, *alias, *user, *region, ii, hostKey, keySource)
	return 0
}

// findOnline pages through DescribeInstanceInformation and returns the
// Online managed instances that match, newest registration first. Tag
// filters can't be combined with other filter keys, so with tags the ping
// status is checked here; the name is always compared here (there is no
// name filter).
func findOnline(ctx context.Context, api ssm.API, name string, tags tagFlags) ([]types.InstanceInformation, error) {
	filters := []types.InstanceInformationStringFilter(tags)
	if len(filters) == 0 {
		filters = []types.InstanceInformationStringFilter{
			{Key: aws.String("PingStatus"), Values: []string{string(types.PingStatusOnline)}},
			{Key: aws.String("ResourceType"), Values: []string{string(types.ResourceTypeManagedInstance)}},
		}
	}
	out, err := ssm.ListInstances(ctx, api, filters, 0, func(ii types.InstanceInformation) bool {
		return ii.PingStatus == types.PingStatusOnline && strings.HasPrefix(aws.ToString(ii.InstanceId), "mi-") &&
			(name == "" || aws.ToString(ii.Name) == name)
	})
	if err != nil {
		if ssm.IsAccessDenied(err) {
			return nil, fmt.Errorf("describe instance information: access denied: you need ssm:DescribeInstanceInformation: %w", err)
		}
		return nil, fmt.Errorf("describe instance information: %w", err)
	}
	sort.SliceStable(out, func(i, j int) bool {
		a, b := aws.ToTime(out[i].RegistrationDate), aws.ToTime(out[j].RegistrationDate)
		if !a.Equal(b) {
			return a.After(b)
		}
		return aws.ToString(out[i].InstanceId) < aws.ToString(out[j].InstanceId)
	})
	return out, nil
}

func describeSelector(name string, tags tagFlags) string {
	var parts []string
	if name != "" {
		parts = append(parts, fmt.Sprintf("named %q", name))
	}
	for _, f := range tags {
		parts = append(parts, fmt.Sprintf("tagged %s=%s", strings.TrimPrefix(aws.ToString(f.Key), "tag:"), f.Values[0]))
	}
	return strings.Join(parts, " and ")
}

// sshConfigHostKey reads the bastion's public host key from -host-key or
// SSH_PUBLIC_HOST_KEY_BASE64ENCODED: an authorized_keys-style line, plain
// or base64 (the Secrets Manager value); a private key is accepted too and
// only its public half is used. nil when neither is given.
func sshConfigHostKey(file string) (gossh.PublicKey, string, error) {
	source, value := "SSH_PUBLIC_HOST_KEY_BASE64ENCODED", os.Getenv("SSH_PUBLIC_HOST_KEY_BASE64ENCODED")
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, "", fmt.Errorf("-host-key: %w", err)
		}
		source, value = file, string(b)
	}
	if strings.TrimSpace(value) == "" {
		return nil, "", nil
	}
	isPublicKey := func(b []byte) bool { return parsePublicKeyText(b) != nil }
	if text, err := entrypoint.DecodeKeyText(source, value, isPublicKey); err == nil {
		return parsePublicKeyText(text), source, nil
	}
	if signer, err := entrypoint.ParseHostKey(source, value); err == nil {
		return signer.PublicKey(), source, nil
	}
	return nil, "", fmt.Errorf("%s: not a public host key (authorized_keys line, base64 or plain)", source)
}

// parsePublicKeyText takes the first key line of b ("type base64 [comment]",
// or a known_hosts line).
func parsePublicKeyText(b []byte) gossh.PublicKey {
	for _, line := range bytes.Split(b, []byte("\n")) {
		line = bytes.TrimSpace(line)
		if len(line) == 0 || line[0] == '#' {
			continue
		}
		if k, _, _, _, err := gossh.ParseAuthorizedKey(line); err == nil {
			return k
		}
		if _, _, k, _, _, err := gossh.ParseKnownHosts(line); err == nil {
			return k
		}
		return nil
	}
	return nil
}

func writeSSHConfig(w io.Writer, alias, user, region string, ii types.InstanceInformation, hostKey gossh.PublicKey, keySource string) {
	id := aws.ToString(ii.InstanceId)
	fmt.Fprintf(w, "# bastion: managed instance %s", id)
	if n := aws.ToString(ii.Name); n != "" {
		fmt.Fprintf(w, " (%s)", n)
	}
	fmt.Fprintf(w, " in %s, generated by \"bastion ssh-config\" on %s.\n", region, time.Now().UTC().Format(time.RFC3339))
	fmt.Fprintln(w, "# Needs the AWS CLI with the Session Manager plugin, and ssm:StartSession on")
	fmt.Fprintf(w, "# this instance with the %s document. A task restart registers a new\n", sshDocument)
	fmt.Fprintln(w, "# mi- id: run this command again then (the host key stays the same).")
	if hostKey != nil {
		fmt.Fprintf(w, "#\n# Host key %s (from %s).\n", gossh.FingerprintSHA256(hostKey), keySource)
		fmt.Fprintln(w, "# Add this line to ~/.ssh/known_hosts (or to the file UserKnownHostsFile names):")
		fmt.Fprintf(w, "#   %s\n", knownhosts.Line([]string{alias}, hostKey))
	} else {
		fmt.Fprintln(w, "#\n# No host key given (-host-key FILE or SSH_PUBLIC_HOST_KEY_BASE64ENCODED): ssh will ask")
		fmt.Fprintln(w, "# on first connect. Compare with the fingerprint `bastion keygen` printed.")
	}
	fmt.Fprintf(w, "Host %s\n", alias)
	fmt.Fprintf(w, "  HostName %s\n", id)
	fmt.Fprintf(w, "  User %s\n", user)
	fmt.Fprintf(w, "  ProxyCommand aws ssm start-session --target %%h --document-name %s --parameters portNumber=%%p --region %s\n", sshDocument, region)
	fmt.Fprintf(w, "  HostKeyAlias %s\n", alias)
	fmt.Fprintln(w, "  ServerAliveInterval 30")
	fmt.Fprintln(w, "#")
	fmt.Fprintln(w, "# Reach private hosts through it (ssh db-1, scp, rsync; or ssh -J "+alias+" host):")
	fmt.Fprintln(w, "# Host db-*")
	fmt.Fprintf(w, "#   ProxyJump %s\n", alias)
	fmt.Fprintln(w, "# Port forwarding for GUI clients: ssh -N -L 3306:db.internal:3306 "+alias)
}

func timeText(t *time.Time) string {
	if t == nil {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}
