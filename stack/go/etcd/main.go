// Command etcd is the etcd server of the local stack, built from go.etcd.io/etcd/server/v3 as a
// Go module (etcd's own go.mod has replace directives, so it cannot be installed with go install).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
