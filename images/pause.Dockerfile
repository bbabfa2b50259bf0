# syntax=docker/dockerfile:1
# The kubelet's sandbox image: a static Go binary that waits for SIGTERM and reaps zombies. Build it first
# (a scratch image has no compiler), then the image with that folder as the context:
#   (cd images/pause && CGO_ENABLED=0 go build -trimpath -ldflags='-s -w -buildid=' -o /tmp/pause-ctx/pause .)
#   docker build -f images/pause.Dockerfile -t kubechat/pause:1 /tmp/pause-ctx
FROM scratch
COPY pause /pause
USER 65535:65535
ENTRYPOINT ["/pause"]
