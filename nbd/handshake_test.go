package nbd

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"math/big"
	"strings"
	"testing"
	"time"
)

func newTestServer(t testing.TB, cfg Config, exports ...Export) *Server {
	t.Helper()
	s := NewServer(cfg)
	for _, e := range exports {
		if err := s.AddExport(e); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

func twoExports() []Export {
	return []Export{
		{Name: "first", Description: "the first one", Device: newMemDev(1<<20, 1)},
		{Name: "second", Device: newMemDev(12345, 2)},
	}
}

func TestGoWithInfos(t *testing.T) {
	s := newTestServer(t, Config{MaxRequest: 1 << 20}, twoExports()...)
	c, _ := startConn(t, s)
	c.greet(flagFixedNewstyle | flagNoZeroes)
	c.sendOpt(optGo, infoData("first", infoName, infoDescription, infoBlockSize, 999))
	ei, typ := c.infoReplies(optGo)
	if typ != repAck {
		t.Fatalf("final %#x", typ)
	}
	want := exportInfo{size: 1 << 20, flags: TransmissionFlags, name: "first", desc: "the first one", minBS: 1, prefBS: 4096, maxBS: 1 << 20}
	if ei != want {
		t.Fatalf("got %+v want %+v", ei, want)
	}
	c.req(0, CmdRead, 7, 4096, 512)
	if errno, cookie := c.simple(); errno != 0 || cookie != 7 {
		t.Fatalf("read reply errno %d cookie %d", errno, cookie)
	}
	if got := c.read(512); !bytes.Equal(got, s.lookup("first").Device.(*memDev).data[4096:4608]) {
		t.Fatal("read data mismatch")
	}
	c.req(0, CmdDisc, 8, 0, 0)
	c.expectClosed()
}

func TestDefaultExportAndInfo(t *testing.T) {
	s := newTestServer(t, Config{}, twoExports()...)
	c, _ := startConn(t, s)
	c.greet(flagFixedNewstyle)
	// INFO on the second export, then an unknown one, then GO on the default.
	c.sendOpt(optInfo, infoData("second"))
	ei, typ := c.infoReplies(optInfo)
	if typ != repAck || ei.size != 12345 {
		t.Fatalf("INFO second: %+v %#x", ei, typ)
	}
	c.sendOpt(optGo, infoData("nope"))
	if _, typ := c.infoReplies(optGo); typ != repErrUnknown {
		t.Fatalf("GO unknown: %#x", typ)
	}
	// Still in option phase; the failed GO did not fall back to "second".
	c.sendOpt(optGo, infoData(""))
	ei, typ = c.infoReplies(optGo)
	if typ != repAck || ei.size != 1<<20 {
		t.Fatalf("GO default: %+v %#x", ei, typ)
	}
	c.req(0, CmdRead, 1, 1<<20-512, 512)
	if errno, _ := c.simple(); errno != 0 {
		t.Fatalf("read at end of default export: errno %d", errno)
	}
	c.read(512)
}

func TestExportName(t *testing.T) {
	for _, noZeroes := range []bool{false, true} {
		s := newTestServer(t, Config{}, twoExports()...)
		c, errc := startConn(t, s)
		cf := uint32(flagFixedNewstyle)
		if noZeroes {
			cf |= flagNoZeroes
		}
		c.greet(cf)
		c.sendOpt(optExportName, []byte("second"))
		b := c.read(10)
		if binary.BigEndian.Uint64(b) != 12345 || binary.BigEndian.Uint16(b[8:]) != TransmissionFlags {
			t.Fatalf("export name reply %x", b)
		}
		if !noZeroes {
			if z := c.read(124); !bytes.Equal(z, make([]byte, 124)) {
				t.Fatal("reserved bytes not zero")
			}
		}
		c.req(0, CmdFlush, 3, 0, 0)
		if errno, cookie := c.simple(); errno != 0 || cookie != 3 {
			t.Fatalf("flush: %d %d", errno, cookie)
		}
		c.req(0, CmdDisc, 0, 0, 0)
		c.expectClosed()
		if err := <-errc; err != nil {
			t.Fatalf("ServeConn after DISC: %v", err)
		}
	}
}

func TestExportNameUnknownCloses(t *testing.T) {
	s := newTestServer(t, Config{}, twoExports()...)
	c, errc := startConn(t, s)
	c.greet(flagFixedNewstyle)
	c.sendOpt(optExportName, []byte("missing"))
	c.expectClosed()
	if err := <-errc; err == nil || !strings.Contains(err.Error(), "unknown export") {
		t.Fatalf("err %v", err)
	}
}

func TestList(t *testing.T) {
	s := newTestServer(t, Config{}, twoExports()...)
	c, _ := startConn(t, s)
	c.greet(flagFixedNewstyle | flagNoZeroes)
	c.sendOpt(optList, nil)
	var names []string
	for {
		r := c.readOptReply()
		if r.typ == repAck {
			break
		}
		if r.typ != repServer {
			t.Fatalf("LIST reply type %#x", r.typ)
		}
		n := binary.BigEndian.Uint32(r.data)
		names = append(names, string(r.data[4:4+n]))
	}
	if strings.Join(names, ",") != "first,second" {
		t.Fatalf("names %v", names)
	}
	c.sendOpt(optList, []byte("x"))
	c.expectReply(optList, repErrInvalid)
}

func TestAbort(t *testing.T) {
	s := newTestServer(t, Config{}, twoExports()...)
	c, errc := startConn(t, s)
	c.greet(flagFixedNewstyle)
	c.sendOpt(optAbort, nil)
	c.expectReply(optAbort, repAck)
	c.expectClosed()
	if err := <-errc; err != nil {
		t.Fatalf("ServeConn after ABORT: %v", err)
	}
}

func TestHandshakeErrors(t *testing.T) {
	s := newTestServer(t, Config{}, twoExports()...)

	t.Run("bad client flags", func(t *testing.T) {
		c, errc := startConn(t, s)
		c.greet(1 << 5)
		c.expectClosed()
		if <-errc == nil {
			t.Fatal("want error")
		}
	})
	t.Run("bad option magic", func(t *testing.T) {
		c, errc := startConn(t, s)
		c.greet(flagFixedNewstyle)
		c.write(bytes.Repeat([]byte{0x41}, 16))
		c.expectClosed()
		if <-errc == nil {
			t.Fatal("want error")
		}
	})
	t.Run("oversized option", func(t *testing.T) {
		c, errc := startConn(t, s)
		c.greet(flagFixedNewstyle)
		b := binary.BigEndian.AppendUint64(nil, magicIHaveOpt)
		b = binary.BigEndian.AppendUint32(b, optGo)
		b = binary.BigEndian.AppendUint32(b, 0xfffffff0) // no data follows
		c.write(b)
		c.expectReply(optGo, repErrTooBig)
		c.expectClosed()
		if <-errc == nil {
			t.Fatal("want error")
		}
	})
	t.Run("oversized export name", func(t *testing.T) {
		c, _ := startConn(t, s)
		c.greet(flagFixedNewstyle)
		b := binary.BigEndian.AppendUint64(nil, magicIHaveOpt)
		b = binary.BigEndian.AppendUint32(b, optExportName)
		b = binary.BigEndian.AppendUint32(b, 1<<30)
		c.write(b)
		c.expectClosed()
	})
	t.Run("name length beyond option", func(t *testing.T) {
		c, _ := startConn(t, s)
		c.greet(flagFixedNewstyle)
		for _, opt := range []uint32{optInfo, optGo} {
			d := binary.BigEndian.AppendUint32(nil, 1000)
			d = append(d, "first\x00\x00"...)
			c.sendOpt(opt, d)
			c.expectReply(opt, repErrInvalid)
			c.sendOpt(opt, []byte{0, 0})
			c.expectReply(opt, repErrInvalid)
			// info count not matching the remaining length
			d = infoData("first", infoName)
			c.sendOpt(opt, d[:len(d)-1])
			c.expectReply(opt, repErrInvalid)
		}
		// still negotiating
		c.sendOpt(optGo, infoData("first"))
		if _, typ := c.infoReplies(optGo); typ != repAck {
			t.Fatalf("GO after errors: %#x", typ)
		}
	})
	t.Run("unknown option", func(t *testing.T) {
		c, _ := startConn(t, s)
		c.greet(flagFixedNewstyle)
		c.sendOpt(4242, []byte("payload"))
		c.expectReply(4242, repErrUnsup)
		c.sendOpt(4, nil) // PEEK_EXPORT, withdrawn
		c.expectReply(4, repErrUnsup)
		c.sendOpt(optStartTLS, nil) // TLS not configured
		c.expectReply(optStartTLS, repErrUnsup)
		c.sendOpt(optStructuredReply, []byte{1})
		c.expectReply(optStructuredReply, repErrInvalid)
		c.sendOpt(optGo, infoData(""))
		if _, typ := c.infoReplies(optGo); typ != repAck {
			t.Fatalf("GO: %#x", typ)
		}
	})
	t.Run("timeout", func(t *testing.T) {
		s := newTestServer(t, Config{HandshakeTimeout: 100 * time.Millisecond}, twoExports()...)
		c, errc := startConn(t, s)
		c.read(18) // greeting, then silence
		select {
		case err := <-errc:
			if err == nil {
				t.Fatal("want timeout error")
			}
		case <-time.After(5 * time.Second):
			t.Fatal("handshake deadline not enforced")
		}
	})
	t.Run("client vanishes", func(t *testing.T) {
		c, errc := startConn(t, s)
		c.greet(flagFixedNewstyle)
		c.write([]byte("IHAVE"))
		c.c.Close()
		if <-errc == nil {
			t.Fatal("want error")
		}
	})
}

func TestMetaContextNegotiation(t *testing.T) {
	s := newTestServer(t, Config{}, twoExports()...)
	c, _ := startConn(t, s)
	c.greet(flagFixedNewstyle | flagNoZeroes)
	c.sendOpt(optSetMetaContext, metaData("first", metaAllocation))
	c.expectReply(optSetMetaContext, repErrInvalid) // structured replies first
	c.sendOpt(optStructuredReply, nil)
	c.expectReply(optStructuredReply, repAck)
	for _, q := range [][]string{nil, {"base:"}, {"base:allocation"}} {
		c.sendOpt(optListMetaContext, metaData("first", q...))
		r := c.expectReply(optListMetaContext, repMetaContext)
		if string(r.data[4:]) != metaAllocation {
			t.Fatalf("list %q: %q", q, r.data)
		}
		c.expectReply(optListMetaContext, repAck)
	}
	c.sendOpt(optListMetaContext, metaData("first", "qemu:dirty-bitmap:x"))
	c.expectReply(optListMetaContext, repAck) // unknown namespace ignored
	c.sendOpt(optSetMetaContext, metaData("nope", metaAllocation))
	c.expectReply(optSetMetaContext, repErrUnknown)
	d := metaData("first", metaAllocation)
	c.sendOpt(optSetMetaContext, d[:len(d)-2])
	c.expectReply(optSetMetaContext, repErrInvalid)
	d = metaData("first")
	binary.BigEndian.PutUint32(d[len(d)-4:], 1<<30) // query count beyond data
	c.sendOpt(optSetMetaContext, d)
	c.expectReply(optSetMetaContext, repErrInvalid)
	// Select on "second" but GO on "first": no context for "first".
	c.sendOpt(optSetMetaContext, metaData("second", metaAllocation))
	c.expectReply(optSetMetaContext, repMetaContext)
	c.expectReply(optSetMetaContext, repAck)
	c.sendOpt(optGo, infoData("first"))
	ei, typ := c.infoReplies(optGo)
	if typ != repAck || ei.flags != TransmissionFlags|FlagSendDF {
		t.Fatalf("GO: %+v %#x", ei, typ)
	}
	c.req(0, CmdBlockStatus, 1, 0, 4096)
	if _, errno, ch := c.anyReply(); errno != EINVAL || ch.flags&replyFlagDone == 0 {
		t.Fatalf("block status without context: errno %d chunk %+v", errno, ch)
	}
}

func TestShutdownDuringOptions(t *testing.T) {
	s := newTestServer(t, Config{}, twoExports()...)
	c, errc := startConn(t, s)
	c.greet(flagFixedNewstyle)
	time.Sleep(20 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	c.expectClosed()
	<-errc
}

// selfSigned returns a server TLS config and a client config trusting it.
func selfSigned(t testing.TB) (*tls.Config, *tls.Config) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "nbd-test"},
		DNSNames: []string{"nbd-test"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	srv := &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}, MinVersion: tls.VersionTLS12}
	return srv, &tls.Config{RootCAs: pool, ServerName: "nbd-test"}
}

func TestTLSRequired(t *testing.T) {
	srvCfg, cliCfg := selfSigned(t)
	dev := newMemDev(1<<16, 9)
	s := newTestServer(t, Config{TLS: srvCfg, TLSRequire: true}, Export{Name: "x", Device: dev})
	c, _ := startConn(t, s)
	c.greet(flagFixedNewstyle | flagNoZeroes)
	for _, opt := range []uint32{optList, optStructuredReply, optInfo, 4242} {
		c.sendOpt(opt, nil)
		c.expectReply(opt, repErrTLSReqd)
	}
	c.sendOpt(optStartTLS, []byte{1})
	c.expectReply(optStartTLS, repErrInvalid)
	c.sendOpt(optStartTLS, nil)
	c.expectReply(optStartTLS, repAck)
	tc := tls.Client(c.c, cliCfg)
	if err := tc.Handshake(); err != nil {
		t.Fatalf("TLS handshake: %v", err)
	}
	c.c, c.br = tc, newBufReader(tc)
	c.sendOpt(optStartTLS, nil)
	c.expectReply(optStartTLS, repErrInvalid)
	ei := c.goExport2("x")
	if ei.size != 1<<16 {
		t.Fatalf("size %d", ei.size)
	}
	c.req(0, CmdRead, 5, 100, 1000)
	if errno, cookie := c.simple(); errno != 0 || cookie != 5 {
		t.Fatal(errno, cookie)
	}
	if !bytes.Equal(c.read(1000), dev.data[100:1100]) {
		t.Fatal("data mismatch over TLS")
	}
	c.req(0, CmdDisc, 0, 0, 0)
	c.expectClosed()
}

func TestTLSRequiredExportNameCloses(t *testing.T) {
	srvCfg, _ := selfSigned(t)
	s := newTestServer(t, Config{TLS: srvCfg, TLSRequire: true}, twoExports()...)
	c, _ := startConn(t, s)
	c.greet(flagFixedNewstyle)
	c.sendOpt(optExportName, []byte("first"))
	c.expectClosed()
}

func TestTLSOptional(t *testing.T) {
	srvCfg, cliCfg := selfSigned(t)
	s := newTestServer(t, Config{TLS: srvCfg}, twoExports()...)
	// Without TLS everything works.
	c, _ := startConn(t, s)
	c.goExport("first", true, false)
	// With STARTTLS, state negotiated before it is forgotten.
	c2, _ := startConn(t, s)
	c2.greet(flagFixedNewstyle | flagNoZeroes)
	c2.sendOpt(optStructuredReply, nil)
	c2.expectReply(optStructuredReply, repAck)
	c2.sendOpt(optStartTLS, nil)
	c2.expectReply(optStartTLS, repAck)
	tc := tls.Client(c2.c, cliCfg)
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	c2.c, c2.br = tc, newBufReader(tc)
	if ei := c2.goExport2("second"); ei.flags != TransmissionFlags {
		t.Fatalf("structured replies survived STARTTLS: flags %#x", ei.flags)
	}
	c2.req(0, CmdRead, 1, 0, 100)
	c2.expectRead(false, 1, 0, 100)
}
