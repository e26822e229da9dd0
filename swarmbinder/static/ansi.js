/* The build log's ANSI colours as DOM nodes. Plain ES2018, no build step.
 *
 * The log is written by the repository being built, so every byte of it is hostile: text only
 * ever becomes a text node (never HTML), and the only thing an escape sequence can change is
 * which of our own classes a span carries, or a colour computed here from clamped numbers.
 *
 * A small state machine after ECMA-48: SGR (ESC [ ... m) sets colours, bold, italic and
 * underline; every other escape sequence (cursor moves, erase, OSC titles and hyperlinks, DCS)
 * is dropped. The state lives on between appends, so a colour set by one line and a sequence
 * split across two events both come out right, as in a terminal. A string sequence (OSC, DCS)
 * ends at BEL, ST or the end of the line, so an unterminated one hides at most one line.
 */
(function (global) {
  "use strict";

  var ESC = "\x1b";
  var TEXT = 0;
  var ESCAPE = 1; // after ESC
  var CSI = 2; // after ESC [ (or the one-byte CSI)
  var STRING = 3; // inside OSC, DCS, SOS, PM or APC
  var STRING_ESC = 4; // ESC inside a string: ST ends it
  var MAX_PARAMS = 64; // characters; a longer CSI is read to its end and ignored
  var STRING_OPENERS = "]PX^_";

  function defaultStyle() {
    return { fg: null, bg: null, bold: false, italic: false, underline: false };
  }

  /* An xterm 256-colour index as [r, g, b] (16-255; 0-15 are classes). */
  function paletteRgb(n) {
    if (n >= 232) {
      var grey = 8 + (n - 232) * 10;
      return [grey, grey, grey];
    }
    var i = n - 16;
    var level = function (v) { return v === 0 ? 0 : 55 + v * 40; };
    return [level(Math.floor(i / 36)), level(Math.floor(i / 6) % 6), level(i % 6)];
  }

  function byte(text) {
    var n = parseInt(text, 10);
    return isNaN(n) ? 0 : Math.max(0, Math.min(255, n));
  }

  /* The colour of 38/48's extended forms, read from ``params`` at ``i`` (after the 38/48).
   * Returns [colour or null, parameters used]. A colour is a class index (0-15) or "rgb(...)". */
  function extendedColour(params, i) {
    var mode = params[i];
    if (mode === "5" && i + 1 < params.length) {
      var n = byte(params[i + 1]);
      return [n < 16 ? n : "rgb(" + paletteRgb(n).join(",") + ")", 2];
    }
    if (mode === "2" && i + 3 < params.length) {
      return ["rgb(" + [params[i + 1], params[i + 2], params[i + 3]].map(byte).join(",") + ")", 4];
    }
    return [null, params.length - i]; // malformed: ignore the rest, as xterm does
  }

  /* The style after SGR parameters ``text`` (e.g. "1;31", "38;5;208", "" for reset). */
  function applySgr(style, text) {
    // colon sub-parameters (38:2::r:g:b) are read as their last values
    var params = text.split(";");
    for (var i = 0; i < params.length; i++) {
      var sub = params[i].split(":");
      var code = sub[0] === "" ? 0 : parseInt(sub[0], 10);
      if ((code === 38 || code === 48) && sub.length > 1) {
        var colourParams = sub[1] === "2" ? ["2"].concat(sub.slice(-3)) : sub.slice(1);
        var colon = extendedColour(colourParams, 0)[0];
        style[code === 38 ? "fg" : "bg"] = colon;
        continue;
      }
      if (code === 0) {
        style = defaultStyle();
      } else if (code === 1) {
        style.bold = true;
      } else if (code === 22) {
        style.bold = false;
      } else if (code === 3) {
        style.italic = true;
      } else if (code === 23) {
        style.italic = false;
      } else if (code === 4) {
        style.underline = true;
      } else if (code === 24) {
        style.underline = false;
      } else if (code >= 30 && code <= 37) {
        style.fg = code - 30;
      } else if (code >= 90 && code <= 97) {
        style.fg = code - 90 + 8;
      } else if (code === 39) {
        style.fg = null;
      } else if (code >= 40 && code <= 47) {
        style.bg = code - 40;
      } else if (code >= 100 && code <= 107) {
        style.bg = code - 100 + 8;
      } else if (code === 49) {
        style.bg = null;
      } else if (code === 38 || code === 48) {
        var found = extendedColour(params, i + 1);
        style[code === 38 ? "fg" : "bg"] = found[0];
        i += found[1];
      }
      // anything else (blink, inverse, fonts...) is ignored
    }
    return style;
  }

  function isPlain(style) {
    return style.fg === null && style.bg === null && !style.bold && !style.italic &&
      !style.underline;
  }

  function colourOnto(span, style, which) {
    var colour = style[which];
    if (colour === null) {
      return;
    }
    if (typeof colour === "number") {
      span.classList.add("ansi-" + which + "-" + colour);
    } else {
      // a string we built from clamped integers; CSSOM, never a style attribute
      span.style[which === "fg" ? "color" : "backgroundColor"] = colour;
    }
  }

  /* A text node, or a span of our classes holding one. */
  function styledNode(text, style) {
    var node = document.createTextNode(text);
    if (isPlain(style)) {
      return node;
    }
    var span = document.createElement("span");
    colourOnto(span, style, "fg");
    colourOnto(span, style, "bg");
    if (style.bold) {
      span.classList.add("ansi-bold");
    }
    if (style.italic) {
      span.classList.add("ansi-italic");
    }
    if (style.underline) {
      span.classList.add("ansi-underline");
    }
    span.appendChild(node);
    return span;
  }

  /* Reads text with escape sequences; ``onText(text, style)`` gets each run of plain text. */
  function AnsiParser() {
    this.state = TEXT;
    this.params = "";
    this.overflow = false;
    this.style = defaultStyle();
  }

  AnsiParser.prototype.startCsi = function () {
    this.state = CSI;
    this.params = "";
    this.overflow = false;
  };

  AnsiParser.prototype.feed = function (text, onText) {
    var run = "";
    var self = this;
    var flush = function () {
      if (run) {
        onText(run, self.style);
        run = "";
      }
    };
    for (var i = 0; i < text.length; i++) {
      var c = text[i];
      var code = text.charCodeAt(i);
      if (this.state === TEXT) {
        if (c === ESC) {
          this.state = ESCAPE;
        } else if (code === 0x9b) {
          this.startCsi();
        } else {
          run += c;
        }
      } else if (this.state === ESCAPE) {
        if (c === "[") {
          this.startCsi();
        } else if (STRING_OPENERS.indexOf(c) >= 0) {
          this.state = STRING;
        } else if (c === ESC || (code >= 0x20 && code <= 0x2f)) {
          // ESC ( B and friends: an intermediate, then one final byte; stay until it comes
        } else if (c === "\n") {
          this.state = TEXT;
          run += c;
        } else {
          this.state = TEXT; // a two-byte sequence (ESC 7, ESC M...): dropped
        }
      } else if (this.state === CSI) {
        if (code >= 0x20 && code <= 0x3f) {
          // parameters and intermediates; past the cap the sequence is read but not applied
          if (this.params.length < MAX_PARAMS) {
            this.params += c;
          } else {
            this.overflow = true;
          }
        } else if (code >= 0x40 && code <= 0x7e) {
          if (c === "m" && !this.overflow && /^[0-9;:]*$/.test(this.params)) {
            flush();
            this.style = applySgr(this.style, this.params);
          }
          this.state = TEXT;
        } else {
          // a control character ends a broken sequence; the character itself is text
          this.state = TEXT;
          if (c !== ESC) {
            run += c;
          } else {
            this.state = ESCAPE;
          }
        }
      } else if (this.state === STRING) {
        if (c === "\x07") {
          this.state = TEXT;
        } else if (c === ESC) {
          this.state = STRING_ESC;
        } else if (c === "\n") {
          this.state = TEXT;
          run += c;
        }
      } else if (this.state === STRING_ESC) {
        this.state = c === "\\" ? TEXT : STRING;
        if (c === "\n") {
          this.state = TEXT;
          run += c;
        }
      }
    }
    flush();
  };

  /* ``text`` without any escape sequence (for messages shown outside the log). */
  function stripAnsi(text) {
    var out = "";
    new AnsiParser().feed(text, function (run) { out += run; });
    return out;
  }

  /* Appends coloured log text to ``container`` (a <pre>), keeping the colour between calls. */
  function AnsiLog(container) {
    this.container = container;
    this.parser = new AnsiParser();
  }

  AnsiLog.prototype.append = function (text) {
    var container = this.container;
    var fragment = document.createDocumentFragment();
    this.parser.feed(text, function (run, style) {
      fragment.appendChild(styledNode(run, style));
    });
    container.appendChild(fragment);
  };

  global.SwarmBinder = global.SwarmBinder || {};
  global.SwarmBinder.AnsiLog = AnsiLog;
  global.SwarmBinder.stripAnsi = stripAnsi;
})(window);
