package nbd

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"io"
)

// handshake runs fixed newstyle negotiation. It returns true when the
// connection enters transmission, false with a nil error on NBD_OPT_ABORT.
func (c *conn) handshake(ctx context.Context) (bool, error) {
	c.startHandshakeDeadline()
	c.newReader()

	var hello [18]byte
	binary.BigEndian.PutUint64(hello[0:], magicNBD)
	binary.BigEndian.PutUint64(hello[8:], magicIHaveOpt)
	binary.BigEndian.PutUint16(hello[16:], flagFixedNewstyle|flagNoZeroes)
	if _, err := c.nc.Write(hello[:]); err != nil {
		return false, fmt.Errorf("nbd: handshake: send greeting: %w", err)
	}
	var cf [4]byte
	if _, err := io.ReadFull(c.br, cf[:]); err != nil {
		return false, fmt.Errorf("nbd: handshake: read client flags: %w", err)
	}
	cflags := binary.BigEndian.Uint32(cf[:])
	if cflags&^(flagFixedNewstyle|flagNoZeroes) != 0 {
		return false, fmt.Errorf("nbd: handshake: unknown client flags %#x", cflags)
	}
	c.noZeroes = cflags&flagNoZeroes != 0

	var (
		tlsUp      bool
		structured bool
		metaSel    bool    // base:allocation selected by the last SET_META_CONTEXT
		metaExp    *Export // export that SET_META_CONTEXT referred to
	)
	tlsRequired := c.srv.cfg.TLS != nil && c.srv.cfg.TLSRequire

	for {
		var oh [16]byte
		if _, err := io.ReadFull(c.br, oh[:]); err != nil {
			return false, fmt.Errorf("nbd: handshake: read option header: %w", err)
		}
		if m := binary.BigEndian.Uint64(oh[0:8]); m != magicIHaveOpt {
			return false, fmt.Errorf("nbd: handshake: bad option magic %#x", m)
		}
		opt := binary.BigEndian.Uint32(oh[8:12])
		olen := binary.BigEndian.Uint32(oh[12:16])
		if olen > maxOptionLen {
			// Skipping up to 4 GiB is not worth it: refuse and hang up.
			if opt != optExportName && c.optReply(opt, repErrTooBig, []byte("option data too large")) == nil {
				c.linger()
			}
			return false, fmt.Errorf("nbd: handshake: option %d length %d exceeds %d", opt, olen, maxOptionLen)
		}
		if cap(c.optbuf) < int(olen) {
			c.optbuf = make([]byte, olen)
		}
		data := c.optbuf[:olen]
		if _, err := io.ReadFull(c.br, data); err != nil {
			return false, fmt.Errorf("nbd: handshake: read option %d data: %w", opt, err)
		}

		if opt == optAbort {
			c.optReply(opt, repAck, nil) // the client may already be gone
			return false, nil
		}
		if c.srv.isClosing() {
			if opt == optExportName {
				return false, fmt.Errorf("nbd: handshake: server shutting down")
			}
			if err := c.optReply(opt, repErrShutdown, []byte("server shutting down")); err != nil {
				return false, err
			}
			continue
		}
		if tlsRequired && !tlsUp && opt != optStartTLS {
			if opt == optExportName {
				return false, fmt.Errorf("nbd: handshake: NBD_OPT_EXPORT_NAME before required TLS")
			}
			if err := c.optReply(opt, repErrTLSReqd, []byte("TLS required")); err != nil {
				return false, err
			}
			continue
		}

		var err error
		switch opt {
		case optExportName:
			e := c.srv.lookup(string(data))
			if e == nil {
				return false, fmt.Errorf("nbd: handshake: NBD_OPT_EXPORT_NAME: unknown export %q", data)
			}
			c.setupTransmission(e, structured, metaSel && metaExp == e, false)
			out := binary.BigEndian.AppendUint64(c.obuf[:0], uint64(c.size))
			out = binary.BigEndian.AppendUint16(out, c.flags)
			if !c.noZeroes {
				out = append(out, make([]byte, 124)...)
			}
			c.obuf = out
			if _, err := c.nc.Write(out); err != nil {
				return false, fmt.Errorf("nbd: handshake: send export info: %w", err)
			}
			return true, nil

		case optList:
			if len(data) != 0 {
				err = c.optReply(opt, repErrInvalid, []byte("NBD_OPT_LIST takes no data"))
				break
			}
			for _, e := range c.srv.exportList() {
				p := binary.BigEndian.AppendUint32(nil, uint32(len(e.Name)))
				p = append(p, e.Name...)
				p = append(p, e.Description...)
				if err = c.optReply(opt, repServer, p); err != nil {
					break
				}
			}
			if err == nil {
				err = c.optReply(opt, repAck, nil)
			}

		case optStartTLS:
			switch {
			case c.srv.cfg.TLS == nil:
				err = c.optReply(opt, repErrUnsup, []byte("TLS not configured"))
			case len(data) != 0:
				err = c.optReply(opt, repErrInvalid, []byte("NBD_OPT_STARTTLS takes no data"))
			case tlsUp:
				err = c.optReply(opt, repErrInvalid, []byte("TLS already active"))
			default:
				if err = c.optReply(opt, repAck, nil); err != nil {
					break
				}
				if err = c.startTLS(ctx, c.srv.cfg.TLS); err != nil {
					return false, err
				}
				tlsUp = true
				// No negotiation state survives STARTTLS.
				structured, metaSel, metaExp = false, false, nil
			}

		case optInfo, optGo:
			var e *Export
			e, err = c.infoOrGo(opt, data, structured, metaSel, metaExp)
			if err == nil && e != nil && opt == optGo {
				return true, nil
			}

		case optStructuredReply:
			if len(data) != 0 {
				err = c.optReply(opt, repErrInvalid, []byte("NBD_OPT_STRUCTURED_REPLY takes no data"))
				break
			}
			structured = true
			err = c.optReply(opt, repAck, nil)

		case optListMetaContext, optSetMetaContext:
			if opt == optSetMetaContext {
				// SET replaces the selection, even when it fails.
				metaSel, metaExp = false, nil
			}
			name, queries, ok := parseMetaRequest(data)
			switch {
			case !structured:
				err = c.optReply(opt, repErrInvalid, []byte("negotiate structured replies first"))
			case !ok:
				err = c.optReply(opt, repErrInvalid, []byte("malformed metadata context request"))
			default:
				e := c.srv.lookup(name)
				if e == nil {
					err = c.optReply(opt, repErrUnknown, []byte("unknown export"))
					break
				}
				match := false
				for _, q := range queries {
					if q == metaAllocation || (opt == optListMetaContext && q == "base:") {
						match = true
					}
				}
				if opt == optListMetaContext && len(queries) == 0 {
					match = true
				}
				if match {
					id := uint32(0)
					if opt == optSetMetaContext {
						id = metaAllocID
					}
					p := binary.BigEndian.AppendUint32(nil, id)
					p = append(p, metaAllocation...)
					if err = c.optReply(opt, repMetaContext, p); err != nil {
						break
					}
				}
				if opt == optSetMetaContext {
					metaSel, metaExp = match, e
				}
				err = c.optReply(opt, repAck, nil)
			}

		default:
			err = c.optReply(opt, repErrUnsup, []byte("option not supported"))
		}
		if err != nil {
			return false, err
		}
	}
}

// infoOrGo answers NBD_OPT_INFO / NBD_OPT_GO. It returns the chosen export
// when the reply ended in NBD_REP_ACK, and sets up transmission for GO.
func (c *conn) infoOrGo(opt uint32, data []byte, structured, metaSel bool, metaExp *Export) (*Export, error) {
	what := "NBD_OPT_INFO"
	if opt == optGo {
		what = "NBD_OPT_GO"
	}
	if len(data) < 6 {
		return nil, c.optReply(opt, repErrInvalid, []byte(what+": option too short"))
	}
	nameLen := binary.BigEndian.Uint32(data[0:4])
	if uint64(nameLen) > uint64(len(data))-6 {
		return nil, c.optReply(opt, repErrInvalid, []byte(what+": name length exceeds option"))
	}
	name := string(data[4 : 4+nameLen])
	rest := data[4+nameLen:]
	nInfo := int(binary.BigEndian.Uint16(rest[0:2]))
	if len(rest) != 2+2*nInfo {
		return nil, c.optReply(opt, repErrInvalid, []byte(what+": information request count does not match option length"))
	}
	e := c.srv.lookup(name)
	if e == nil {
		return nil, c.optReply(opt, repErrUnknown, []byte("unknown export"))
	}
	var wantName, wantDesc bool
	for i := 0; i < nInfo; i++ {
		switch binary.BigEndian.Uint16(rest[2+2*i:]) {
		case infoName:
			wantName = true
		case infoDescription:
			wantDesc = true
		}
	}
	flags := TransmissionFlags
	if structured {
		flags |= FlagSendDF
	}
	p := binary.BigEndian.AppendUint16(nil, infoExport)
	p = binary.BigEndian.AppendUint64(p, uint64(e.Device.Size()))
	p = binary.BigEndian.AppendUint16(p, flags)
	if err := c.optReply(opt, repInfo, p); err != nil {
		return nil, err
	}
	p = binary.BigEndian.AppendUint16(p[:0], infoBlockSize)
	pref := e.BlockSize
	if pref < 512 || pref > 4096 || pref&(pref-1) != 0 {
		pref = 4096
	}
	p = binary.BigEndian.AppendUint32(p, 1)
	p = binary.BigEndian.AppendUint32(p, pref)
	p = binary.BigEndian.AppendUint32(p, c.srv.cfg.MaxRequest)
	if err := c.optReply(opt, repInfo, p); err != nil {
		return nil, err
	}
	if wantName {
		p = binary.BigEndian.AppendUint16(p[:0], infoName)
		p = append(p, e.Name...)
		if err := c.optReply(opt, repInfo, p); err != nil {
			return nil, err
		}
	}
	if wantDesc && e.Description != "" {
		p = binary.BigEndian.AppendUint16(p[:0], infoDescription)
		p = append(p, e.Description...)
		if err := c.optReply(opt, repInfo, p); err != nil {
			return nil, err
		}
	}
	if err := c.optReply(opt, repAck, nil); err != nil {
		return nil, err
	}
	if opt == optGo {
		c.setupTransmission(e, structured, metaSel && metaExp == e, false)
	}
	return e, nil
}

// parseMetaRequest decodes the data of LIST/SET_META_CONTEXT: export name,
// query count and queries. Every length must fit inside data exactly.
func parseMetaRequest(data []byte) (name string, queries []string, ok bool) {
	if len(data) < 8 {
		return "", nil, false
	}
	nl := binary.BigEndian.Uint32(data[0:4])
	if uint64(nl) > uint64(len(data))-8 {
		return "", nil, false
	}
	name = string(data[4 : 4+nl])
	rest := data[4+nl:]
	n := binary.BigEndian.Uint32(rest[0:4])
	rest = rest[4:]
	if uint64(n) > uint64(len(rest))/4 {
		return "", nil, false
	}
	queries = make([]string, 0, n)
	for i := uint32(0); i < n; i++ {
		if len(rest) < 4 {
			return "", nil, false
		}
		ql := binary.BigEndian.Uint32(rest[0:4])
		if uint64(ql) > uint64(len(rest))-4 {
			return "", nil, false
		}
		queries = append(queries, string(rest[4:4+ql]))
		rest = rest[4+ql:]
	}
	if len(rest) != 0 {
		return "", nil, false
	}
	return name, queries, true
}

// optReply sends one option reply in a single write.
func (c *conn) optReply(opt, typ uint32, payload []byte) error {
	b := binary.BigEndian.AppendUint64(c.obuf[:0], magicOptReply)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, typ)
	b = binary.BigEndian.AppendUint32(b, uint32(len(payload)))
	b = append(b, payload...)
	c.obuf = b
	if _, err := c.nc.Write(b); err != nil {
		return fmt.Errorf("nbd: handshake: send reply to option %d: %w", opt, err)
	}
	return nil
}

// startTLS upgrades the connection after NBD_REP_ACK to NBD_OPT_STARTTLS.
func (c *conn) startTLS(ctx context.Context, cfg *tls.Config) error {
	if c.br.Buffered() != 0 {
		return fmt.Errorf("nbd: handshake: client sent data before the TLS handshake")
	}
	tc := tls.Server(c.raw, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		return fmt.Errorf("nbd: handshake: TLS: %w", err)
	}
	c.nc = tc
	c.sr = nil
	c.br.Reset(tc)
	return nil
}
