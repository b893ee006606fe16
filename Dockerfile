# syntax=docker/dockerfile:1
#
# Production image of the bastion: one static Go binary as ENTRYPOINT (PID 1)
# and the real amazon-ssm-agent, on Amazon Linux 2023. No AWS CLI, jq or
# mustache: bastion does the activation lifecycle and renders the agent's
# config itself. See deploy/README.md.
#
#   docker build -t bastion .
#   docker build --build-arg SSM_AGENT_VERSION=3.3.987.0 --build-arg SSM_AGENT_REGION=eu-west-1 -t bastion .
#
# Base images are pinned by digest (the multi-arch index digest). The digests
# below were NOT verified on the machine this file was written on (it has no
# registry access); refresh them before the first build and whenever the
# base image should move, and commit the result:
#
#   docker buildx imagetools inspect golang:1.26-bookworm   # "Digest:" line
#   docker buildx imagetools inspect amazonlinux:2023
#
# (or: crane digest golang:1.26-bookworm). A wrong or stale digest fails the
# build with "manifest unknown"; it never silently pulls something else.

ARG GO_IMAGE=golang:1.26-bookworm@sha256:116d58cbd88c1297624acc6e967a060012422bacf9930927e23fb719189c6f36
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
# key is not shipped in this repository: save it, from the SSM User Guide page
# "Verify the signature of SSM Agent"
# (https://docs.aws.amazon.com/systems-manager/latest/userguide/verify-agent-signature.html),
# as deploy/amazon-ssm-agent.gpg before building. The build checks its full
# fingerprint (SSM_AGENT_KEY_FPR) before importing it, and refuses an RPM
# whose signature does not check against exactly that key. AWS extends the
# key's expiry from time to time and republishes it there (the fingerprint
# stays). SSM_AGENT_SHA256, when given, pins the file's hash as well. The package is installed with
# --noscripts: without systemd its scriptlets would only try to enable and
# start the service, and bastion runs the agent itself.
ARG SSM_AGENT_VERSION=3.3.987.0
ARG SSM_AGENT_REGION=us-east-1
ARG SSM_AGENT_SHA256=
ARG SSM_AGENT_KEY_FPR=DE92C7DA3E56E92331D62A36BC1F495C97DD04ED
ARG TARGETARCH=amd64
COPY deploy/amazon-ssm-agent.gpg /tmp/amazon-ssm-agent.gpg
RUN set -eu; \
    case "${TARGETARCH}" in amd64|arm64) ;; *) echo "unsupported arch ${TARGETARCH}" >&2; exit 1;; esac; \
    url="https://s3.${SSM_AGENT_REGION}.amazonaws.com/amazon-ssm-${SSM_AGENT_REGION}/${SSM_AGENT_VERSION}/linux_${TARGETARCH}/amazon-ssm-agent.rpm"; \
    curl --fail --silent --show-error --location --proto '=https' --tlsv1.2 -o /tmp/amazon-ssm-agent.rpm "$url"; \
    if [ -n "${SSM_AGENT_SHA256}" ]; then \
      echo "${SSM_AGENT_SHA256}  /tmp/amazon-ssm-agent.rpm" | sha256sum -c -; \
    fi; \
    fpr="$(gpg --show-keys --with-colons /tmp/amazon-ssm-agent.gpg | awk -F: '/^fpr/ {print $10; exit}')"; \
    [ "$fpr" = "${SSM_AGENT_KEY_FPR}" ] \
      || { echo "deploy/amazon-ssm-agent.gpg has fingerprint '$fpr', want the SSM Agent key ${SSM_AGENT_KEY_FPR}" >&2; exit 1; }; \
    rpm --import /tmp/amazon-ssm-agent.gpg; \
    out="$(rpm --checksig /tmp/amazon-ssm-agent.rpm)"; echo "$out"; \
    case "$out" in *"digests signatures OK"*) ;; *) echo "amazon-ssm-agent.rpm: signature not verified" >&2; exit 1;; esac; \
    rpm -i --noscripts --define '_pkgverify_level all' /tmp/amazon-ssm-agent.rpm; \
    amazon-ssm-agent -version; \
    mkdir -p /var/lib/amazon/ssm /etc/amazon/ssm /var/log/amazon/ssm; \
    rm -f /tmp/amazon-ssm-agent.rpm /tmp/amazon-ssm-agent.gpg; \
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
