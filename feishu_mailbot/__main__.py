import sys

from feishu_mailbot.cli import main

sys.exit(main())
