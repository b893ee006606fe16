// Package ssm runs the hybrid-activation lifecycle of an ECS/Fargate bastion:
// it registers the container with AWS Systems Manager as a managed instance
// (mi-…), renders the agent's configuration, runs amazon-ssm-agent as a
// supervised child, and deregisters the instance on shutdown.
//
// The package replaces the run.sh of the seed article (aws ssm
// create-activation, amazon-ssm-agent -register, aws ssm delete-activation,
// trap … deregister-managed-instance) with a bounded, logged sequence:
//
//	preflight → orphan sweep → stale registration → render agent config
//	→ CreateActivation → amazon-ssm-agent -register -y → DeleteActivation
//	→ start agent → wait for PingStatus Online
//
// It imports no other package of the project; cmd/bastion hands it a Config,
// an API (see NewAPI) and a Starter backed by the supervisor, which owns
// wait4.
package ssm
