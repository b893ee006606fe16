// Package deploy holds the deployment files of the bastion (ECS task
// definition, IAM policies, the SSM agent's signing key) and, in its tests,
// checks them against the code: the variable names, the stop timeout, the
// tag keys and the IAM actions the product needs. See README.md here.
package deploy
