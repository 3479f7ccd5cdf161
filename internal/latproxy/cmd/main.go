// Command latproxy is a TCP proxy adding a fixed delay in each direction
// (see package latproxy). It prints "listening HOST:PORT" once it accepts.
//
//	go run ./internal/latproxy/cmd -listen 127.0.0.1:0 -to 127.0.0.1:5000 -rtt 10ms
package main

import (
	"flag"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/erofs-blockd/erofs-blockd/internal/latproxy"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "listen `HOST:PORT`")
	to := flag.String("to", "", "target `HOST:PORT`")
	rtt := flag.Duration("rtt", 10*time.Millisecond, "round trip time added (half in each direction)")
	flag.Parse()
	if *to == "" || *rtt < 0 {
		flag.Usage()
		os.Exit(2)
	}
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, "latproxy:", err)
		os.Exit(1)
	}
	fmt.Println("listening", l.Addr())
	p := &latproxy.Proxy{Target: *to, Delay: *rtt / 2}
	if err := p.Serve(l); err != nil {
		fmt.Fprintln(os.Stderr, "latproxy:", err)
		os.Exit(1)
	}
}
