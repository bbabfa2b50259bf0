module kubechat.local/bench/upstream

go 1.22
