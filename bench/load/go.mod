module kubechat.local/bench/load

go 1.22
