module kubechat.dev/pause

go 1.22
