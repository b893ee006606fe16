// Package ssm runs the hybrid-activation lifecycle of an ECS/Fargate bastion:
// it registers the container with AWS Systems Manager as a managed instance
// (mi-…), renders the agent's configuration, runs amazon-ssm-agent as a
// supervised child, and deregisters the instance on shutdown.
//
// The package replaces the run.sh of the seed article (aws ssm
// create-activation, amazon-ssm-agent -register, aws ssm delete-activation,
// trap … deregister-managed-instance) with a bounded, logged sequence, one
// file per stage:
//
//	Start:  preflight.go     activation tier
//	        orphans.go       instances of stopped tasks (proved with ECS)
//	        stale.go         an earlier run's registration file
//	        render.go        the agent's seelog.xml and amazon-ssm-agent.json
//	        activation.go    CreateActivation, DeleteActivation, duplicates
//	        registration.go  amazon-ssm-agent -register -y
//	        agent.go         start the agent, wait for Online
//	Run:    agent.go         restarts; the instance still exists
//	Stop:   agent.go         StopAgent
//	        deregistration.go  Deregister: instances, then activations
//
// Start never cleans up after itself: StopAgent and Deregister undo what
// any point of it created, within the caller's stop budget.
//
// It imports no other package of the project; cmd/bastion hands it a
// Config, the AWS clients (NewClients) and a Starter backed by the
// supervisor, which owns wait4.
package ssm
