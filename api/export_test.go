package api

import "time"

// SetProxyMargin sets what a call s passes on may take beyond the owner's
// deadline, so a test of a hung owner need not wait proxyMargin.
func SetProxyMargin(s *Server, d time.Duration) { s.margin = d }

// DecodeBinary is the records call's decoder of BinaryRecordsType bodies.
var DecodeBinary = decodeBinary
