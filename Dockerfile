# syntax=docker/dockerfile:1
#
# Production image of the bastion: one static Go binary as ENTRYPOINT (PID 1)
# and the real amazon-ssm-agent, on Amazon Linux 2023. No AWS CLI, jq or
# mustache: bastion does the activation lifecycle and renders the agent's
# config itself. See deploy/README.md.
#
#   docker build -t bastion .
#   docker build --build-arg SSM_AGENT_VERSION=3.3.4851.0 --build-arg SSM_AGENT_REGION=eu-west-1 -t bastion .
#
# Base images are pinned by digest (the multi-arch index digest); the Go
# image's tag is go.mod's Go version (go test ./deploy checks both). The
# digests were not pulled on the machine this file was written on (it has
# no registry access): the golang one is the digest public repositories
# pin for the same tag. Refresh them before the first build and whenever
# the base should move, and commit the result:
#
#   docker buildx imagetools inspect golang:1.26.8-bookworm   # "Digest:" line
#   docker buildx imagetools inspect amazonlinux:2023
#
# (or: crane digest golang:1.26.8-bookworm). A wrong or stale digest fails
# the build with "manifest unknown"; it never silently pulls something else.

ARG GO_IMAGE=golang:1.26.8-bookworm@sha256:a688600ca24f8a4d3ca77f95b0dd40704a9fc787c826660eb7ba0b641b8b175d
ARG RUNTIME_IMAGE=amazonlinux:2023@sha256:694092ae18877ed4e3cb9b643759ba95df1f12af12528fefa18f60f79d4c1568

# ---- build: the static binary ------------------------------------------------
FROM ${GO_IMAGE} AS build
WORKDIR /src
ENV CGO_ENABLED=0 GOFLAGS=-mod=readonly
COPY go.mod go.sum ./
RUN go mod download && go mod verify
COPY . .
ARG TARGETOS=linux
ARG TARGETARCH=amd64
RUN GOOS=${TARGETOS} GOARCH=${TARGETARCH} \
    go build -trimpath -ldflags='-s -w' -o /out/bastion ./cmd/bastion \
 && /out/bastion --help >/dev/null

# ---- runtime: Amazon Linux 2023 + amazon-ssm-agent ---------------------------
FROM ${RUNTIME_IMAGE} AS runtime

# The agent comes from AWS's own regional bucket, at a pinned version
# ("latest" works too, but then the image is not reproducible):
#   https://s3.<region>.amazonaws.com/amazon-ssm-<region>/<version>/linux_<arch>/amazon-ssm-agent.rpm
# The RPM is signed by "SSM Agent <ssm-agent-signer@amazon.com>". Its public
# keys are in deploy/amazon-ssm-agent.gpg (from AWS; see the file's head).
# The build refuses that file unless it holds exactly the full fingerprints
# in SSM_AGENT_KEY_FPRS, imports each key into rpm, and installs the RPM
# only when rpm --checksig verifies it and its signer's key ID is one of
# those keys. SSM_AGENT_SHA256, when given, pins the file's hash as well.
# The package is installed with --noscripts: without systemd its scriptlets
# would only try to enable and start the service, and bastion runs the
# agent itself.
ARG SSM_AGENT_VERSION=3.3.4851.0
ARG SSM_AGENT_REGION=us-east-1
ARG SSM_AGENT_SHA256=
ARG SSM_AGENT_KEY_FPRS="4855A9E6833216D6A77D8FE451A8E050D0052E5D 1C5B395CBE5E74E2F1CA21592784DBF388D19D46"
ARG TARGETARCH=amd64
COPY deploy/amazon-ssm-agent.gpg /tmp/amazon-ssm-agent.gpg
RUN set -eu; \
    case "${TARGETARCH}" in amd64|arm64) ;; *) echo "unsupported arch ${TARGETARCH}" >&2; exit 1;; esac; \
    want="$(printf '%s\n' ${SSM_AGENT_KEY_FPRS} | sort | tr '\n' ' ')"; \
    got="$(gpg --show-keys --with-colons /tmp/amazon-ssm-agent.gpg | awk -F: '$1=="pub"{p=1;next} p&&$1=="fpr"{print $10;p=0}' | sort | tr '\n' ' ')"; \
    [ -n "$got" ] && [ "$got" = "$want" ] \
      || { echo "deploy/amazon-ssm-agent.gpg holds the keys '$got', want exactly the SSM Agent keys '$want' (SSM_AGENT_KEY_FPRS)" >&2; exit 1; }; \
    awk '/-----BEGIN PGP PUBLIC KEY BLOCK-----/{n++} n{print > ("/tmp/amazon-ssm-agent-key-" n ".asc")}' /tmp/amazon-ssm-agent.gpg; \
    for k in /tmp/amazon-ssm-agent-key-*.asc; do rpm --import "$k"; done; \
    url="https://s3.${SSM_AGENT_REGION}.amazonaws.com/amazon-ssm-${SSM_AGENT_REGION}/${SSM_AGENT_VERSION}/linux_${TARGETARCH}/amazon-ssm-agent.rpm"; \
    curl --fail --silent --show-error --location --proto '=https' --tlsv1.2 -o /tmp/amazon-ssm-agent.rpm "$url"; \
    if [ -n "${SSM_AGENT_SHA256}" ]; then \
      echo "${SSM_AGENT_SHA256}  /tmp/amazon-ssm-agent.rpm" | sha256sum -c -; \
    fi; \
    out="$(rpm --checksig /tmp/amazon-ssm-agent.rpm)"; echo "$out"; \
    case "$out" in *"digests signatures OK"*) ;; *) echo "amazon-ssm-agent.rpm: signature not verified" >&2; exit 1;; esac; \
    signer="$(rpm -qp --qf '%|RSAHEADER?{%{RSAHEADER:pgpsig}}:{%{SIGPGP:pgpsig}}|' /tmp/amazon-ssm-agent.rpm)"; echo "signed: $signer"; \
    keyid="$(echo "${signer##*Key ID }" | tr 'a-f' 'A-F')"; \
    case "${#keyid}: ${SSM_AGENT_KEY_FPRS} " in "16: "*"${keyid} "*) ;; *) echo "amazon-ssm-agent.rpm: signed by key ID '$keyid', not one of SSM_AGENT_KEY_FPRS" >&2; exit 1;; esac; \
    rpm -i --noscripts --define '_pkgverify_level all' /tmp/amazon-ssm-agent.rpm; \
    amazon-ssm-agent -version; \
    mkdir -p /var/lib/amazon/ssm /etc/amazon/ssm /var/log/amazon/ssm; \
    rm -f /tmp/amazon-ssm-agent.rpm /tmp/amazon-ssm-agent.gpg /tmp/amazon-ssm-agent-key-*.asc; \
    dnf clean all; rm -rf /var/cache/dnf /var/log/dnf* /var/lib/dnf/history*

COPY --from=build /out/bastion /usr/local/bin/bastion

# The agent's state lives in /var/lib/amazon/ssm; bastion renders
# /etc/amazon/ssm/{amazon-ssm-agent.json,seelog.xml} at every start.
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
WORKDIR /
EXPOSE 22
STOPSIGNAL SIGTERM
# ECS ignores Docker's HEALTHCHECK; the task definition repeats it
# (deploy/ecs-task-definition.json).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["/usr/local/bin/bastion", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/bastion"]
